"""Fixtures of the Python API and client tests: a store holding a device profiled on this host with real
onnxruntime measurements, and a real `latpred serve` on that store."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from predictor.compression.config import parse_config
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.settings import StoreSettings
from predictor.store import open_store, register_device, session_scope
from profiler.backends.base import MeasureProtocol
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import model_plan
from profiler.runner import ProfileRunner
from profiler.sinks import StoreSink
from service.server import server_process
from tests import factories

PROFILED_DEVICE = "my-device"
SERVICE_TOKEN = "python-api-token"
# The configs the device was profiled under, as the snippet names them.
CANDIDATES: dict[str, dict[str, Any]] = {"int8": {"default": {"bits": 8}}, "p30": {"default": {"prune_ratio": 0.3}}}
_FAST = MeasureProtocol(warmup_runs=2, min_repeats=5, max_repeats=30, max_seconds=0.3)


@dataclass(frozen=True)
class ProfiledStore:
    """A store under `home` (LATPRED_HOME) whose device PROFILED_DEVICE measured `model_bytes` under CANDIDATES."""

    home: Path
    database_url: str
    model_bytes: bytes


def device_fields(name: str) -> dict[str, Any]:
    """A device with this host's onnxruntime, 1 thread, as the REST API registers it."""
    runtime = local_runtime(1)
    return {"name": name, "backend": runtime.backend, "execution_provider": runtime.execution_provider,
            "runtime_version": runtime.runtime_version, "threads": runtime.threads, "host": describe_host()}


@pytest.fixture(scope="session")
def profiled_store(tmp_path_factory: pytest.TempPathFactory) -> ProfiledStore:
    """A device registered with this host's onnxruntime (1 thread), profiled on a residual block and its int8 and
    30%-pruned variants (every kernel of each measured: what `latpred profile --for-model` does)."""
    settings = StoreSettings(home=tmp_path_factory.mktemp("profiled") / "home")
    model = factories.residual_model(channels=32, size=28)
    backend = OnnxRuntimeBackend(1)
    runtime = backend.runtime()
    store = open_store(settings)
    try:
        with session_scope(store.sessions) as session:
            register_device(session, name=PROFILED_DEVICE, backend=runtime.backend,
                            execution_provider=runtime.execution_provider, runtime_version=runtime.runtime_version,
                            threads=1, host=describe_host())
        items = model_plan(model, "model", [(name, parse_config(config)) for name, config in CANDIDATES.items()])
        report = ProfileRunner(PROFILED_DEVICE, backend, StoreSink(store.sessions, PROFILED_DEVICE), _FAST).run(
            items, budget_minutes=5)
        assert len(report.items_done) == 3, report.to_dict()
    finally:
        store.close()
    return ProfiledStore(home=settings.home, database_url=settings.resolved_database_url,
                         model_bytes=model.SerializeToString())


@pytest.fixture(scope="session")
def served(profiled_store: ProfiledStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a `latpred serve` on the profiled store (token SERVICE_TOKEN)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATPRED_")}
    env.update(LATPRED_HOME=str(profiled_store.home), LATPRED_API_TOKENS=SERVICE_TOKEN, LATPRED_PREDICT_WORKERS="1")
    with server_process(env, log_path=tmp_path_factory.mktemp("served") / "server.log") as server:
        yield server.url
