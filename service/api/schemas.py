"""Request and response bodies of the REST API, one schema family per entity."""
from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

import onnx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from predictor.compression.config import CompressionConfig, parse_config
from predictor.errors import ConfigError
from predictor.kernels.keys import ELEM_TYPE_NAMES
from service.api.problems import ProblemCode

__all__ = [
    "DeviceCreate",
    "DeviceDetail",
    "DevicePublic",
    "DevicesPublic",
    "EstimatePublic",
    "FieldErrorPublic",
    "HealthPublic",
    "JobPublic",
    "KernelEstimatePublic",
    "KernelKey",
    "MeasurementConflictPublic",
    "MeasurementCreate",
    "MeasurementPublic",
    "MeasurementsCreate",
    "MeasurementsInserted",
    "MeasurementsPublic",
    "ModelPublic",
    "ModelSummaryPublic",
    "ModelsPublic",
    "PredictRequest",
    "PredictionPublic",
    "ProblemPublic",
    "RankCandidate",
    "RankRequest",
    "RankedCandidatePublic",
    "RankingPublic",
    "RegressorPublic",
    "RunCreate",
    "RunFinish",
    "RunPublic",
    "ValidationProblemPublic",
]

# Above this a "kernel latency" is a unit mix-up (seconds, microseconds) or garbage: 1e6 ms is 16 minutes.
MAX_LATENCY_MS = 1e6
# Far above any runtime's thread pool, and inside the 32-bit integer column on every database.
MAX_THREADS = 1024
# Percentiles come from a float summary of the same samples: allow rounding noise, not disorder.
_ORDER_REL_TOLERANCE = 1e-6
_DEVICE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"
_RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*$"

LatencyMs = Annotated[float, Field(gt=0, le=MAX_LATENCY_MS, allow_inf_nan=False)]

# Nesting of free-form JSON (compression configs, run reports): real ones are a few levels deep; deep nesting
# only costs recursion further on (serialising, storing, pickling to a worker).
MAX_JSON_DEPTH = 32


def _bounded_depth(value: Any) -> Any:
    """The value itself; ValueError when its lists and objects nest deeper than MAX_JSON_DEPTH (checked without
    recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, Mapping) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded_depth)]


def _compression_config(value: Any) -> Any:
    """The config checked as the library checks it (parse_config), so a request says what `latpred predict` says."""
    if isinstance(value, CompressionConfig):
        return value
    try:
        return parse_config(value)
    except ConfigError as exc:
        # Without pydantic's "Value error, " prefix; the type lets the 422 carry the code invalid_config.
        raise PydanticCustomError(ProblemCode.INVALID_CONFIG.value, "{message}", {"message": str(exc)}) from exc


# A compression config in a request: documented as the CompressionConfig schema, validated by parse_config.
CompressionConfigIn = Annotated[CompressionConfig, BeforeValidator(_compression_config)]


class ProblemPublic(BaseModel):
    """The body of every error answer: RFC 9457 problem details, sent as application/problem+json
    (service.api.problems)."""

    type: str = Field(description="the problem type as a URI (a tag URI naming the code; not meant to be fetched)")
    title: str = Field(description="a short summary of the problem type, the same for every answer of this code")
    status: int = Field(description="the HTTP status of the answer")
    detail: str = Field(description="what went wrong this time, as one readable line")
    code: ProblemCode = Field(description="the machine-readable code: branch on it, not on `detail`")
    instance: str | None = Field(default=None, description="the request's path")


class FieldErrorPublic(BaseModel):
    """One reason a request failed validation."""

    loc: list[int | str] = Field(description="where: \"body\", \"query\" or \"path\", then fields and indexes")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. missing, int_parsing, invalid_config")


class ValidationProblemPublic(ProblemPublic):
    """A 422: what is wrong and where, plus the structured list when the request failed validation."""

    errors: list[FieldErrorPublic] | None = Field(
        default=None, description="each field error (at most 50); absent when the library refused the content")


class HealthPublic(BaseModel):
    status: Literal["ok", "degraded"]
    database: str


class DeviceBase(BaseModel):
    name: str = Field(min_length=1, max_length=128, pattern=_DEVICE_NAME_PATTERN,
                      description="unique device name, used in URLs")
    backend: str = Field(min_length=1, max_length=32, examples=["onnxruntime"])
    execution_provider: str = Field(min_length=1, max_length=128, examples=["CPUExecutionProvider"])
    runtime_version: str = Field(min_length=1, max_length=64, examples=["1.18.0"])
    threads: int = Field(ge=0, le=MAX_THREADS, description="intra-op threads; 0: the runtime's default")
    host: str = Field(default="", max_length=1024, description="hardware description")


class DeviceCreate(DeviceBase):
    """Register a device; the same name with another runtime or kernel profile is a 409."""

    model_config = ConfigDict(extra="forbid")

    kernel_profile: JsonObject | None = Field(
        default=None, description="what decides the device's kernels, as its agent observed them: runtime, CPU "
                                  "architecture and features, NCHWc block, kernels of the probe models")


class DevicePublic(DeviceBase):
    model_config = ConfigDict(from_attributes=True)

    created_at: datetime
    overhead: dict[str, Any] | None = None
    kernel_profile: dict[str, Any] | None = None


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


class RegressorPublic(BaseModel):
    op_type: str
    metrics: dict[str, Any]
    data_version: str
    trained_at: datetime


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=64, pattern=_RUN_ID_PATTERN)
    budget_minutes: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    runtime: JsonObject | None = Field(default=None, description="the runtime the run measures with")
    host: str | None = Field(default=None, max_length=1024, description="the host the run measures on")


class RunFinish(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["finished", "killed"]
    report: JsonObject | None = Field(default=None, description="the run's report; at most "
                                                                "LATPRED_MAX_RUN_REPORT_KB as JSON")


class RunPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    budget_minutes: float | None = None
    report: dict[str, Any] | None = None
    runtime: dict[str, Any] | None = None
    host: str | None = None


class DeviceDetail(DevicePublic):
    """A device with its table size per op type, its regressors' metrics and its profiling runs."""

    measurement_count: int
    measurements: dict[str, int] = Field(description="measurement rows per op type")
    regressors: dict[str, RegressorPublic] = Field(description="regressor per op type")
    runs: list[RunPublic]


# Bounds of a kernel key sent by a profiler: far beyond any kernel a runtime launches (the committed real exports
# have rank <= 4, dims <= 1280, <= 3 inputs, <= 8 attributes, lists <= 4 items), tight enough that no key is
# costly to store, hash or turn into features, and none is an impossible tensor.
MAX_DIM = 2**31 - 1
MAX_RANK = 8
MAX_ELEMENTS = 2**62
MAX_KERNEL_TENSORS = 256
MAX_KEY_ATTRS = 64
MAX_ATTR_ITEMS = 256
MAX_ATTR_TEXT_CHARS = 256
_INT64_MAX = 2**63 - 1
_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]*$"
# Element types as predictor.kernels.keys names them, the numbers it writes for types it has no name for, and the
# names of TensorRT keys (profiler.backends.tensorrt) that ONNX element types lack.
KNOWN_DTYPES = frozenset(ELEM_TYPE_NAMES.values()) | frozenset(
    str(number) for number in onnx.TensorProto.DataType.values()) | frozenset({"float8", "float4"})


def _bounded_shape(dims: list[int]) -> list[int]:
    elements = math.prod(dims)
    if elements > MAX_ELEMENTS:
        raise ValueError(f"a tensor of {elements:.3g} elements is impossible (at most 2^62)")
    return dims


Dim = Annotated[int, Strict(), Field(ge=1, le=MAX_DIM)]
Shape = Annotated[list[Dim], Field(max_length=MAX_RANK), AfterValidator(_bounded_shape)]
KeyName = Annotated[str, Field(min_length=1, max_length=64, pattern=_NAME_PATTERN)]


def _attr_value(value: Any) -> Any:
    """An attribute value as keys hold them: a number, a short string, or a flat list of those."""
    items = value if isinstance(value, list) else [value]
    if isinstance(value, list) and len(value) > MAX_ATTR_ITEMS:
        raise ValueError(f"a list attribute holds at most {MAX_ATTR_ITEMS} items, not {len(value)}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | float | str):
            what = "a list in a list" if isinstance(item, list) else type(item).__name__
            raise ValueError(f"attribute values are numbers, strings or flat lists of them, not {what}")
        if isinstance(item, int) and not -_INT64_MAX - 1 <= item <= _INT64_MAX:
            raise ValueError(f"integer attribute {item} is outside int64")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError("attribute values must be finite numbers, not NaN or infinity")
        if isinstance(item, str) and len(item) > MAX_ATTR_TEXT_CHARS:
            raise ValueError(f"string attributes are at most {MAX_ATTR_TEXT_CHARS} characters")
    return value


class KernelKey(BaseModel):
    """A kernel key as profilers send it (predictor.kernels.keys.KernelKey.to_dict()), every field bounded.

    A value object, the same in requests and answers, hence no Create/Public pair; the API validates it where
    keys enter (measurement uploads).
    """

    model_config = ConfigDict(extra="forbid")

    op_type: KeyName = Field(description="the runtime's op, e.g. NchwcConv, QLinearConv, FusedMatMul")
    inputs: list[Shape | None] = Field(max_length=MAX_KERNEL_TENSORS,
                                       description="input shapes (null: unknown); dims are integers >= 1")
    outputs: list[Shape | None] = Field(max_length=MAX_KERNEL_TENSORS)
    weight: Shape | None = None
    activation: KeyName | None = None
    attrs: dict[KeyName, Annotated[Any, AfterValidator(_attr_value)]] = Field(
        default_factory=dict, max_length=MAX_KEY_ATTRS,
        description="attribute name -> number, string, or flat list of them")
    dtype: str = Field(default="float32", max_length=32, examples=["float32", "int8", "float16"])
    bits: Annotated[int, Strict(), Field(ge=1, le=64)] = 32
    sparsity: float = Field(default=0.0, ge=0.0, le=1.0, allow_inf_nan=False)
    sparsity_pattern: Literal["dense", "unstructured", "2:4"] = "dense"

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, dtype: str) -> str:
        if dtype not in KNOWN_DTYPES:
            raise ValueError(f"unknown dtype {dtype[:32]!r}; known: {', '.join(sorted(ELEM_TYPE_NAMES.values()))}, "
                             "float8, float4, or an ONNX element type number")
        return dtype


class MeasurementCreate(BaseModel):
    """One kernel measurement; op type, bits and key hash are recomputed by the server from the key."""

    model_config = ConfigDict(extra="ignore")

    key: KernelKey = Field(description="canonical kernel key (predictor.kernels.keys.KernelKey.to_dict())")
    median_ms: LatencyMs
    p10_ms: LatencyMs
    p90_ms: LatencyMs
    repeats: int = Field(ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _check_percentile_order(self) -> MeasurementCreate:
        for lower_name, upper_name in (("p10_ms", "median_ms"), ("median_ms", "p90_ms")):
            lower, upper = getattr(self, lower_name), getattr(self, upper_name)
            if lower > upper and not math.isclose(lower, upper, rel_tol=_ORDER_REL_TOLERANCE):
                raise ValueError(f"{lower_name}={lower!r} exceeds {upper_name}={upper!r}")
        return self


class MeasurementsCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=64, pattern=_RUN_ID_PATTERN)
    measurements: list[MeasurementCreate] = Field(max_length=100_000)


# Conflicting rows an upload's answer lists; the count covers them all.
MAX_LISTED_CONFLICTS = 20


class MeasurementConflictPublic(BaseModel):
    key_hash: str
    op_type: str
    stored_median_ms: float = Field(description="the median kept for this run and key")
    sent_median_ms: float = Field(description="the other median sent for it (not stored)")


class MeasurementsInserted(BaseModel):
    inserted: int = Field(description="rows that were new")
    duplicates: int = Field(description="rows already stored for this run (or repeated in the batch)")
    conflicts: int = Field(default=0, description="duplicates whose median differs from the one kept: not stored")
    first_conflict: MeasurementConflictPublic | None = None
    conflicting: list[MeasurementConflictPublic] = Field(
        default_factory=list, description="the conflicting rows in the batch's order, at most "
                                          f"{MAX_LISTED_CONFLICTS} (`conflicts` counts them all)")
    message: str | None = Field(default=None, description="one line naming the conflicting keys (null without "
                                                          "conflicts): what an agent logs")


class MeasurementPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    run_id: str
    key_hash: str
    op_type: str
    bits: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    created_at: datetime
    key: dict[str, Any]


class MeasurementsPublic(BaseModel):
    data: list[MeasurementPublic]
    count: int = Field(description="rows matching the filters, over all pages")
    limit: int
    offset: int
    next_after: int | None = Field(default=None, description="pass as `after` for the next page (a keyset page, as "
                                                             "fast at the end of a large table as at its start); null "
                                                             "on the last page")


class ModelPublic(BaseModel):
    """An uploaded model: content id, inputs and the kernels the server's runtime executes for it."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="sha256 hex digest of the ONNX bytes")
    name: str
    size_bytes: int
    inputs: dict[str, list[int | str | None]]
    kernels: list[dict[str, Any]]


class ModelSummaryPublic(BaseModel):
    """An uploaded model in a list: its id and label, not its kernels."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    size_bytes: int
    created_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelSummaryPublic]
    count: int = Field(description="uploaded models, over all pages")
    limit: int
    offset: int


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    model_id: str
    config: CompressionConfigIn | None = Field(default=None, description="compression config; null: none")
    input_shapes: dict[str, list[int]] | None = Field(
        default=None, description="override the input shapes given at upload, e.g. {\"input\": [1, 3, 224, 224]}"
    )


class KernelEstimatePublic(BaseModel):
    name: str
    op_type: str
    latency_ms: float
    interval_ms: list[float]
    source: str
    key_hash: str
    nodes: list[str]


class EstimatePublic(BaseModel):
    device: str
    latency_ms: float
    interval_ms: list[float]
    table_hit_rate: float
    overhead_ms: float
    sources: dict[str, int]
    reliable: bool = Field(description="false when the figure rests on guesses (kernels of unknown shape, or "
                                       "fallback kernels carrying a tenth of the time or more); warnings say which")
    baseline_reference_ms: dict[str, float] = Field(
        description="the figure is steady-state latency in the device's baseline state: its reference kernels' "
                    "times (ms) when its table was profiled; a measurement scaled by them is comparable (empty: "
                    "the table holds raw times)")
    warnings: list[str]
    kernels: list[KernelEstimatePublic]


class PredictionPublic(EstimatePublic):
    model_id: str
    config: CompressionConfig = Field(description="the config the figure is for, with the fields it sets")


class RankCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    config: CompressionConfigIn = Field(default_factory=CompressionConfig)


class RankRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str
    model_id: str
    candidates: list[RankCandidate] = Field(min_length=1, max_length=1000)
    target_speedup: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    input_shapes: dict[str, list[int]] | None = None


class RankedCandidatePublic(BaseModel):
    name: str
    latency_ms: float
    interval_ms: list[float]
    speedup: float
    meets_target: bool | None
    table_hit_rate: float
    sources: dict[str, int]
    reliable: bool
    warnings: list[str] = Field(description="what the candidate's config could not do, and what its figure rests on")


class RankingPublic(BaseModel):
    device: str
    model_id: str
    baseline_ms: float
    baseline_interval_ms: list[float]
    target_speedup: float | None
    ranked: list[RankedCandidatePublic] = Field(description="fastest first")


class JobPublic(BaseModel):
    """A background job, as any service process reads it from the store; a `latpred worker` runs it."""

    job_id: str
    kind: str
    device: str
    status: Literal["queued", "running", "finished", "failed"]
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = Field(default=0, description="times a worker started it (a job whose worker died runs again)")
    worker: str | None = Field(default=None, description="the `latpred worker` (host:pid) that took it last")
    result: Any = None
    error: str | None = None
