"""The backend interface: one module per device runtime, small enough to add a new one easily."""
from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import onnx

from predictor.errors import LatpredError
from predictor.kernels.keys import Kernel
from predictor.runtime.optimizer import RuntimeSpec

__all__ = [
    "GROUND_TRUTH_PROTOCOL",
    "PROFILING_PROTOCOL",
    "Backend",
    "BackendUnavailableError",
    "KernelTiming",
    "REFERENCE_KINDS",
    "MeasureProtocol",
    "Timing",
    "median_is_stable",
    "reference_kind",
    "reference_model",
    "summarize_ms",
]


class BackendUnavailableError(LatpredError, RuntimeError):
    """The backend cannot run on this host (no GPU, library missing); the message says why."""


@dataclass(frozen=True)
class MeasureProtocol:
    """How one model is timed: warm-up, then repeat until the median is stable or a cap is hit."""

    warmup_runs: int = 5
    min_repeats: int = 10
    max_repeats: int = 200
    max_seconds: float = 2.0
    # Stop when the 95% confidence interval of the median is within this share of the median.
    stable_within: float = 0.02
    # Independent sessions per model: on shared hosts one session can land on slow memory or a busy
    # sibling core for its whole life; the median over sessions is what a model really costs here.
    sessions: int = 1


# End-to-end ground truth (`latpred measure`, validation, benchmarks): three sessions of up to 3 s each.
GROUND_TRUTH_PROTOCOL = MeasureProtocol(warmup_runs=5, min_repeats=15, max_repeats=300, max_seconds=3.0, sessions=3)
# Profiling: two sessions per model, so one unlucky session does not write the table alone.
PROFILING_PROTOCOL = MeasureProtocol(warmup_runs=3, min_repeats=10, max_repeats=200, max_seconds=1.5, sessions=2)


@dataclass(frozen=True)
class Timing:
    """Latency statistics of repeated runs, in milliseconds."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int
    # With paired timing (each run next to a run of the device's reference kernel): the reference kernel's
    # time during these runs as the pairs see it, median_ms / median(run / its reference run). A shared
    # host's slow minute slows both, so median_ms x baseline / reference_ms is the time in the baseline state.
    reference_ms: float | None = None
    # Which reference kernel (REFERENCE_KINDS) the runs were paired with; "fp32" where they were not.
    reference_kind: str = "fp32"


@dataclass(frozen=True)
class KernelTiming:
    """One kernel's in-graph latency as the runtime reports it."""

    kernel: Kernel
    timing: Timing


def summarize_ms(samples_ms: list[float] | np.ndarray) -> Timing:
    """Median and 10th/90th percentiles of samples (ms)."""
    values = np.asarray(samples_ms, dtype=float)
    return Timing(
        median_ms=float(np.median(values)),
        p10_ms=float(np.percentile(values, 10)),
        p90_ms=float(np.percentile(values, 90)),
        repeats=int(values.size),
    )


def median_is_stable(samples: list[float], within: float) -> bool:
    """True if the distribution-free 95% confidence interval of the median is within `within` of it."""
    n = len(samples)
    if n < 5:
        return False
    ordered = sorted(samples)
    half_width = 1.96 * math.sqrt(n) / 2
    low = ordered[max(0, int(math.floor(n / 2 - half_width)))]
    high = ordered[min(n - 1, int(math.ceil(n / 2 + half_width)))]
    median = statistics.median(ordered)
    return median > 0 and (high - low) / 2 <= within * median


@runtime_checkable
class Backend(Protocol):
    """A device runtime: how it executes a model (kernels) and how long each kernel takes."""

    name: str

    def runtime(self) -> RuntimeSpec:
        """The runtime half of the device this backend measures."""
        ...

    def extract_kernels(self, model: onnx.ModelProto) -> list[Kernel]:
        """The kernels this runtime executes for the model (shapes fixed), in execution order."""
        ...

    def measure_kernels(self, model: onnx.ModelProto, protocol: MeasureProtocol,
                        wall: Timing | None = None) -> list[KernelTiming]:
        """In-graph latency of every kernel of the model (`wall`: its end-to-end timing, if known)."""
        ...

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        """End-to-end latency of one inference of the model.

        `paired`: time the device's reference kernel between runs and fill Timing.reference_ms (None: the
        backend's default; a backend that cannot pair leaves reference_ms None). `reference`: which of
        REFERENCE_KINDS to pair with (None: the model's own, reference_kind).
        """
        ...


# A shared host's slow spells do not slow every kind of kernel alike: in accuracy runs 10-12 the int8
# variants' measured times rose by a third to two thirds of what the fp32 reference conv's did (the fp32
# models' by 0.7-1.0 of it), so scaling them by it overcorrected. Models whose work is mostly int8 are
# paired with the reference conv quantized as the int8 configs quantize (QLinearConv), the rest with the
# fp32 conv; each kind has its own baseline (profiler.runner).
REFERENCE_KINDS = ("fp32", "int8")
_INT8_SHARE = 0.5  # share of a model's MACs in int8 kernels from which the int8 reference speaks for it


def reference_kind(kernels: list[Kernel]) -> str:
    """The reference (REFERENCE_KINDS) for a model's kernels: int8 when int8 kernels do most of its MACs."""
    from predictor.kernels.features import FEATURE_NAMES, features_matrix

    int8 = [k.key.bits == 8 for k in kernels]
    if not any(int8):
        return "fp32"
    macs = features_matrix([k.key for k in kernels], cached=False)[:, FEATURE_NAMES.index("macs")]
    total = float(macs.sum())
    return "int8" if total > 0 and float(macs[np.array(int8)].sum()) >= _INT8_SHARE * total else "fp32"


def reference_model(kind: str = "fp32") -> onnx.ModelProto:
    """A fixed 3x3 conv (64 channels, 56x56, about 1 ms) timed periodically to detect drift of the machine.

    `kind` "int8": the same conv quantized as an int8 config quantizes it (static QDQ, per-channel weights).
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"reference kind must be one of {REFERENCE_KINDS}, got {kind!r}")
    return onnx.load_from_string(_reference_bytes(kind))


@functools.lru_cache(maxsize=len(REFERENCE_KINDS))
def _reference_bytes(kind: str) -> bytes:
    """reference_model's serialized model (built once per process: the int8 one takes a quantizer run)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((64, 64, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="reference_conv", pads=[1, 1, 1, 1])], "reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 56, 56])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 56, 56])], [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if kind == "int8":
        from predictor.compression.apply import quantize_int8

        model = quantize_int8(model)
        model.graph.name = "reference_int8"
    return model.SerializeToString()
