"""Model context: a memory-bound kernel runs slower inside a model whose data evicts its own from the cache.

docs/history/results/context.json measured it: a depthwise conv runs x1.6 slower beside 19 MB of other weights than
alone, a dense 3x3 conv x1.04. A kernel key carries no context, so the table holds each kernel at the speed
of the model that measured it first, and a small model built from a big model's kernels is predicted too
slow (mobilenet_v3_small from mobilenet_v3_large's). The correction:

- a model's context is its data traffic per run, D = the sum of its kernels' bytes moved (features.py);
- a measurement's context is that of the profiled model that measured it: the first end-to-end sample of
  the device's run reports that holds its key (the profiler writes a key's row from the first model that
  measures it, profiler.runner);
- a kernel's sensitivity s falls from 1 at an arithmetic intensity of 1 MAC per byte (a depthwise conv)
  to 0 at 30 (a dense 3x3 conv), in log;
- a kernel's latency in context D is its context-free latency x (1 + beta s phi(D)), with
  phi(D) = clip(log2(D / D0), 0, W): no slowdown while the model's data fits (D0), saturating after W
  octaves, when it all streams from memory anyway.

beta, D0 and W are fitted per device with the overhead (predictor.estimation.overhead) from the end-to-end samples:
each profiled model's kernels that other models measured first are put into its context, and the setting
that predicts the models' measured times best is kept; beta 0 when none helps.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.records import RunReport

__all__ = ["ContextModel", "measured_context_factors", "measurement_contexts", "report_samples", "sensitivity"]

_INTENSITY_RANGE = (1.0, 30.0)  # MACs per byte: fully sensitive at the low end, not at all at the high
_MB = 1e6


def sensitivity(bytes_moved: np.ndarray, macs: np.ndarray) -> np.ndarray:
    """How much of a kernel's time depends on where its data is: 1 for memory-bound, 0 for compute-bound."""
    intensity = np.divide(macs, bytes_moved, out=np.zeros(len(macs)), where=bytes_moved > 0)
    low, high = math.log(_INTENSITY_RANGE[0]), math.log(_INTENSITY_RANGE[1])
    return np.clip((high - np.log(np.maximum(intensity, 1e-12))) / (high - low), 0.0, 1.0)


@dataclass(frozen=True)
class ContextModel:
    """A device's context effect: latency x (1 + beta s clip(log2(D / base), 0, width)), D in bytes."""

    beta: float
    base_mb: float
    width_octaves: float

    @property
    def active(self) -> bool:
        return self.beta > 0.0

    def phi(self, traffic_bytes: float | np.ndarray) -> np.ndarray:
        """The context's depth in octaves above the base, capped at the width."""
        ratio = np.maximum(np.asarray(traffic_bytes, dtype=np.float64), 1.0) / (self.base_mb * _MB)
        return np.clip(np.log2(ratio), 0.0, self.width_octaves)

    def factors(self, kernel_sensitivity: np.ndarray, traffic_bytes: float | np.ndarray) -> np.ndarray:
        """Each kernel's latency in its context over its context-free latency (>= 1)."""
        return 1.0 + self.beta * kernel_sensitivity * self.phi(traffic_bytes)

    def to_dict(self) -> dict[str, float]:
        return {"beta": self.beta, "base_mb": self.base_mb, "width_octaves": self.width_octaves}

    @classmethod
    def from_overhead(cls, overhead: Mapping[str, Any] | None) -> ContextModel | None:
        """The model stored in a device's overhead, None where none is (or beta is 0)."""
        stored = (overhead or {}).get("context")
        if not isinstance(stored, Mapping):
            return None
        try:
            model = cls(float(stored["beta"]), float(stored["base_mb"]), float(stored["width_octaves"]))
        except (KeyError, TypeError, ValueError):
            return None
        valid = all(math.isfinite(v) for v in (model.beta, model.base_mb, model.width_octaves))
        return model if valid and model.active and model.base_mb > 0 and model.width_octaves > 0 else None


def measurement_contexts(samples: Iterable[Sequence[str]], bytes_of: Mapping[str, float]) -> dict[str, float]:
    """The context (bytes per run) each key was measured in: the traffic of the first sample holding it.

    `samples` are the kernel hashes of the end-to-end samples in the order they were measured; a sample
    naming a key without bytes (not in the table) is skipped, its traffic unknown.
    """
    contexts: dict[str, float] = {}
    for hashes in samples:
        if not hashes or any(h not in bytes_of for h in hashes):
            continue
        traffic = float(sum(bytes_of[h] for h in hashes))
        for key_hash in hashes:
            contexts.setdefault(key_hash, traffic)
    return contexts


def report_samples(reports: Iterable[RunReport]) -> list[list[str]]:
    """The kernel hashes of each end-to-end timing of run reports, in the order the reports list them."""
    return [list(timing.kernel_hashes) for report in reports for timing in report.end_to_end]


def measured_context_factors(model: ContextModel, key_hashes: Sequence[str], bytes_moved: np.ndarray,
                             macs: np.ndarray, reports: Iterable[RunReport]) -> np.ndarray:
    """Each measured key's factor in the context it was measured in (its median over the context-free value).

    A key no end-to-end sample names (uploaded without reports) is taken to be measured in the median
    context of those that are.
    """
    bytes_of = dict(zip(key_hashes, bytes_moved.tolist(), strict=True))
    contexts = measurement_contexts(report_samples(reports), bytes_of)
    median_context = float(np.median(list(contexts.values()))) if contexts else 0.0
    measured_in = np.array([contexts.get(h, median_context) for h in key_hashes], dtype=np.float64)
    return model.factors(sensitivity(bytes_moved, macs), measured_in)
