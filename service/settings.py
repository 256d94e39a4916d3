"""Service settings: the LATPRED_* variables of the CLI and the REST service (the store's location in
predictor.settings.StoreSettings, which these extend)."""
from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from predictor.runtime.optimizer import OptimizerLimits
from predictor.settings import StoreSettings

__all__ = ["Settings", "get_settings"]


class Settings(StoreSettings):
    """Configuration of the CLI and the REST service: the store's location (StoreSettings) and the service's own."""

    model_config = SettingsConfigDict(env_prefix="LATPRED_", extra="ignore")

    api_tokens: str = Field(default="", description="comma-separated bearer tokens that may write")
    read_token_required: bool = Field(default=False, description="require a token for reads too")
    max_upload_mb: float = Field(default=200.0, gt=0,
                                 description="largest model upload; larger ones get 413 while they stream")
    optimize_timeout_s: float = Field(default=120.0, gt=0,
                                      description="wall-clock limit on one run of the runtime's optimizer")
    optimize_memory_mb: float = Field(default=4096.0, gt=0,
                                      description="memory one run of the runtime's optimizer may add")
    max_body_mb: float = Field(default=16.0, gt=0,
                               description="largest JSON request body; larger ones get 413 before they are read")
    max_model_nodes: int = Field(default=20_000, gt=0,
                                 description="most nodes an uploaded model may have (subgraphs included)")
    max_model_kernels_mb: float = Field(default=16.0, gt=0,
                                        description="largest kernel list (as JSON) stored for an uploaded model")
    max_run_report_kb: float = Field(default=1024.0, gt=0,
                                     description="largest profiling run report (as JSON) stored with a run")
    predict_timeout_s: float = Field(default=120.0, gt=0,
                                     description="wall-clock limit on one predict or rank question (504 past it)")
    predict_workers: int = Field(default=2, ge=1, le=64,
                                 description="worker processes answering predict and rank questions at once")
    predict_queue: int = Field(default=16, ge=0,
                               description="questions that may wait for a free worker; more get 503")
    model_store: str = Field(default="database",
                             description='where uploaded models are kept: "database" (the store, read by every '
                                         "process) or a directory every replica mounts")
    predictor_refresh_wait_s: float = Field(
        default=0.5, ge=0, description="how long a question waits for its device's predictor to take in what changed "
                                       "in the store; past it, the question is answered by the current predictor "
                                       "while the new one is built")
    job_poll_s: float = Field(default=1.0, gt=0, description="how often an idle `latpred worker` looks for jobs")
    job_stale_s: float = Field(default=120.0, gt=0,
                               description="a running job whose worker wrote no heartbeat for this long is queued "
                                           "again (its worker died)")
    job_max_attempts: int = Field(default=3, ge=1, description="runs of a job before it is failed for good")
    anonymous_requests_per_minute: int = Field(
        default=600, ge=0, description="requests per minute one client address may send without a valid token "
                                       "(429 past it; 0: no limit)")

    @property
    def optimizer_limits(self) -> OptimizerLimits:
        """The limits every optimizer run on an uploaded model gets (in a worker process)."""
        return OptimizerLimits(timeout_s=self.optimize_timeout_s, memory_mb=self.optimize_memory_mb)

    @property
    def tokens(self) -> list[str]:
        return [token.strip() for token in self.api_tokens.split(",") if token.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
