"""What the dashboard shows about a device, computed from its store rows: coverage, chart series, run flags.

Pure functions over ORM rows (or anything with the same attributes), so the numbers are testable
without a browser. A key measured in several runs counts once, at the median of its medians (as the
predictor's lookup table does).
"""
from __future__ import annotations

import logging
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from predictor.features import FEATURE_NAMES, kernel_features
from predictor.kernels import KernelKey

__all__ = [
    "BIT_WIDTHS",
    "VALIDATION_BAND",
    "KernelPoint",
    "kernel_points",
    "latency_vs_macs",
    "op_family",
    "op_coverage",
    "regressor_accuracy",
    "run_flags",
    "speedup_by_bits",
    "speedup_by_sparsity",
    "validation_summary",
]

logger = logging.getLogger(__name__)

BIT_WIDTHS = (32, 16, 8, 4)
# The band drawn around predicted == measured, and the share of validations inside it.
VALIDATION_BAND = 0.10
_MACS_INDEX = FEATURE_NAMES.index("macs")
# Runtime variants of one operation: NchwcConv, FusedConv, QLinearConv, ConvInteger are all "Conv".
_FAMILY_PREFIX = re.compile(r"^(?:Nchwc|QLinear|Fused|Q(?=[A-Z]))")
_FAMILY_SUFFIX = re.compile(r"(?:Integer|NBits)$")
# Attributes that change the work of a kernel (the kernel size is in the weight shape), with their ONNX
# defaults so that a runtime variant that spells a default out still matches; fused activations and
# layout flags do not count.
_SHAPE_ATTR_DEFAULTS: dict[str, Any] = {"group": 1, "strides": 1, "dilations": 1, "transA": 0, "transB": 0}
_SPARSITY_DECIMALS = 2


class MeasurementRow(Protocol):
    key_hash: str
    key: dict[str, Any]
    median_ms: float


class RegressorRow(Protocol):
    metrics: dict[str, Any]


class ValidationRow(Protocol):
    model_name: str
    config_name: str
    predicted_ms: float
    measured_ms: float
    scaled_ms: float | None


class RunRow(Protocol):
    run_id: str
    status: str
    report: dict[str, Any] | None


def op_family(op_type: str) -> str:
    """The operation behind a runtime op type: "QLinearConv", "NchwcConv" and "ConvInteger" are "Conv"."""
    family = op_type
    while True:
        stripped = _FAMILY_SUFFIX.sub("", _FAMILY_PREFIX.sub("", family))
        if stripped == family or not stripped:
            return family
        family = stripped


def _shape_attr(attrs: Mapping[str, Any], name: str) -> Any:
    value = attrs.get(name)
    if value is None:
        return _SHAPE_ATTR_DEFAULTS[name]
    if isinstance(value, tuple) and value and all(item == value[0] for item in value):
        return value[0]
    return value


def _first_shape(shapes: Sequence[Any]) -> tuple[int, ...] | None:
    return tuple(shapes[0]) if shapes and shapes[0] is not None else None


@dataclass(frozen=True)
class KernelPoint:
    """One measured kernel (distinct key) of a device: what the charts plot."""

    op_type: str
    family: str
    bits: int
    sparsity: float
    sparsity_pattern: str
    macs: float
    latency_ms: float
    runs: int
    shape: tuple[Any, ...]

    @classmethod
    def from_key(cls, key: KernelKey, latency_ms: float, runs: int) -> KernelPoint:
        attrs = dict(key.attrs)
        family = op_family(key.op_type)
        shape = (family, _first_shape(key.inputs), _first_shape(key.outputs), key.weight,
                 tuple(_shape_attr(attrs, name) for name in _SHAPE_ATTR_DEFAULTS))
        return cls(
            op_type=key.op_type,
            family=family,
            bits=key.bits,
            sparsity=round(key.sparsity, _SPARSITY_DECIMALS),
            sparsity_pattern=key.sparsity_pattern,
            macs=float(kernel_features(key)[_MACS_INDEX]),
            latency_ms=latency_ms,
            runs=runs,
            shape=shape,
        )

    @property
    def is_dense(self) -> bool:
        return self.sparsity == 0.0 and self.sparsity_pattern != "2:4"


def kernel_points(rows: Iterable[MeasurementRow]) -> list[KernelPoint]:
    """One point per distinct key, at the median of its runs' medians; unreadable keys are skipped (logged)."""
    medians: defaultdict[str, list[float]] = defaultdict(list)
    keys: dict[str, dict[str, Any]] = {}
    for row in rows:
        medians[row.key_hash].append(row.median_ms)
        keys.setdefault(row.key_hash, row.key)
    points = []
    for key_hash, values in medians.items():
        try:
            key = KernelKey.from_dict(keys[key_hash])
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("skipping measurement %s with an unreadable key: %s", key_hash, exc)
            continue
        points.append(KernelPoint.from_key(key, statistics.median(values), len(values)))
    return points


def regressor_accuracy(regressors: Mapping[str, RegressorRow]) -> dict[str, Any]:
    """Held-out accuracy over the device's regressors, weighted by test samples.

    {"within_10pct", "mape", "n_test", "held_out_ops", "in_sample_ops"}; shares are None without held-out data.
    """
    weighted_within = weighted_mape = 0.0
    n_test = held_out_ops = in_sample_ops = 0
    for regressor in regressors.values():
        metrics = regressor.metrics or {}
        tested = int(metrics.get("n_test") or 0)
        if metrics.get("held_out") and tested > 0 and "mape" in metrics and "within_10pct" in metrics:
            weighted_within += float(metrics["within_10pct"]) * tested
            weighted_mape += float(metrics["mape"]) * tested
            n_test += tested
            held_out_ops += 1
        else:
            in_sample_ops += 1
    return {
        "within_10pct": weighted_within / n_test if n_test else None,
        "mape": weighted_mape / n_test if n_test else None,
        "n_test": n_test,
        "held_out_ops": held_out_ops,
        "in_sample_ops": in_sample_ops,
    }


def op_coverage(rows_per_op: Mapping[str, int], points: Sequence[KernelPoint],
                regressors: Mapping[str, RegressorRow], flat_axes: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One row per op type: measurement rows, distinct kernels, bit-widths, sparsities, MACs range, regressor."""
    by_op: defaultdict[str, list[KernelPoint]] = defaultdict(list)
    for point in points:
        by_op[point.op_type].append(point)
    coverage = []
    for op_type in sorted(set(rows_per_op) | set(by_op) | set(regressors)):
        mine = by_op.get(op_type, [])
        metrics = dict(regressors[op_type].metrics or {}) if op_type in regressors else None
        macs = [point.macs for point in mine]
        coverage.append({
            "op_type": op_type,
            "family": op_family(op_type),
            "measurements": int(rows_per_op.get(op_type, 0)),
            "kernels": len(mine),
            "shapes": len({point.shape for point in mine}),
            "bits": sorted({point.bits for point in mine}, reverse=True),
            "sparsities": sorted({point.sparsity for point in mine}),
            "macs_min": min(macs) if macs else None,
            "macs_max": max(macs) if macs else None,
            "regressor": metrics,
            "flat_axes": sorted(flat_axes.get(op_type, [])),
        })
    return coverage


def latency_vs_macs(points: Sequence[KernelPoint], max_points: int) -> dict[str, Any]:
    """Scatter series per op type, MACs > 0 only (log axes); evenly thinned to at most max_points in all."""
    plotted = [point for point in points if point.macs > 0 and point.latency_ms > 0]
    step = max(1, math.ceil(len(plotted) / max_points)) if max_points > 0 else 1
    shown = plotted[::step]
    series: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in shown:
        series[point.op_type].append({"macs": point.macs, "latency_ms": point.latency_ms, "bits": point.bits,
                                      "sparsity": point.sparsity})
    return {"series": [{"op_type": op_type, "points": series[op_type]} for op_type in sorted(series)],
            "total": len(plotted), "shown": len(shown)}


def _median_speedups(pairs: Mapping[tuple[Any, ...], list[float]]) -> dict[tuple[Any, ...], tuple[float, int]]:
    return {group: (statistics.median(ratios), len(ratios)) for group, ratios in pairs.items() if ratios}


def speedup_by_bits(points: Sequence[KernelPoint]) -> list[dict[str, Any]]:
    """Per op family and bit-width: median speedup over fp32 of the same shape (dense kernels only).

    Rows {"family", "bits", "speedup", "pairs", "median_ms", "kernels"}; "speedup" is None where no
    shape was measured both in fp32 and at that bit-width (1.0 for fp32 itself when it was paired).
    """
    dense = [point for point in points if point.is_dense]
    fp32: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for point in dense:
        if point.bits == 32:
            fp32[point.shape].append(point.latency_ms)
    baseline = {shape: statistics.median(values) for shape, values in fp32.items()}
    ratios: defaultdict[tuple[Any, ...], list[float]] = defaultdict(list)
    latencies: defaultdict[tuple[Any, ...], list[float]] = defaultdict(list)
    paired_fp32: defaultdict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for point in dense:
        latencies[(point.family, point.bits)].append(point.latency_ms)
        if point.bits != 32 and point.shape in baseline:
            ratios[(point.family, point.bits)].append(baseline[point.shape] / point.latency_ms)
            paired_fp32[point.family].add(point.shape)
    speedups = _median_speedups(ratios)
    rows = []
    for family, bits in sorted(latencies, key=lambda group: (group[0], -group[1])):
        if bits == 32:
            pairs = len(paired_fp32.get(family, ()))
            speedup: float | None = 1.0 if pairs else None
        else:
            speedup, pairs = speedups.get((family, bits), (None, 0))
        values = latencies[(family, bits)]
        rows.append({"family": family, "bits": bits, "speedup": speedup, "pairs": pairs,
                     "median_ms": statistics.median(values), "kernels": len(values)})
    return rows


def speedup_by_sparsity(points: Sequence[KernelPoint]) -> list[dict[str, Any]]:
    """Per op family, sparsity pattern and level: median speedup over the dense kernel of the same shape and bits.

    Rows {"family", "pattern", "sparsity", "speedup", "pairs"}, only where a dense twin was measured;
    each (family, pattern) series starts with its dense point (sparsity 0, speedup 1).
    """
    dense: defaultdict[tuple[Any, ...], list[float]] = defaultdict(list)
    for point in points:
        if point.is_dense:
            dense[(point.shape, point.bits)].append(point.latency_ms)
    baseline = {group: statistics.median(values) for group, values in dense.items()}
    ratios: defaultdict[tuple[Any, ...], list[float]] = defaultdict(list)
    for point in points:
        twin = baseline.get((point.shape, point.bits))
        if point.is_dense or twin is None:
            continue
        ratios[(point.family, point.sparsity_pattern, point.sparsity)].append(twin / point.latency_ms)
    speedups = _median_speedups(ratios)
    rows = []
    for family, pattern in sorted({(family, pattern) for family, pattern, _ in speedups}):
        rows.append({"family": family, "pattern": pattern, "sparsity": 0.0, "speedup": 1.0, "pairs": 0})
        for (row_family, row_pattern, sparsity), (speedup, pairs) in sorted(speedups.items()):
            if (row_family, row_pattern) == (family, pattern):
                rows.append({"family": family, "pattern": pattern, "sparsity": sparsity, "speedup": speedup,
                             "pairs": pairs})
    return rows


def validation_summary(validations: Sequence[ValidationRow]) -> dict[str, Any]:
    """Predicted-vs-measured points with their relative error, and the share within the ±10% band.

    A prediction is held against the measurement scaled to the device's baseline state where the validation
    kept one (as `latpred validate` judges it), else against the raw measurement.
    """
    points: list[dict[str, Any]] = []
    errors: list[float] = []
    for row in validations:
        truth = row.scaled_ms if row.scaled_ms else row.measured_ms
        error = row.predicted_ms / truth - 1 if truth and truth > 0 else None
        points.append({"model": row.model_name, "config": row.config_name, "predicted_ms": row.predicted_ms,
                       "measured_ms": truth, "raw_measured_ms": row.measured_ms, "error": error})
        if error is not None:
            errors.append(abs(error))
    return {
        "points": points,
        "count": len(points),
        "band": VALIDATION_BAND,
        "within_band": sum(error <= VALIDATION_BAND for error in errors) / len(errors) if errors else None,
        "mape": statistics.fmean(errors) if errors else None,
    }


def run_flags(runs: Sequence[RunRow]) -> list[dict[str, Any]]:
    """Per run: status, kernels measured, stop reason, drift checks over threshold and the worst drift ratio."""
    flagged = []
    for run in runs:
        report = run.report or {}
        drift = [entry for entry in report.get("drift") or [] if isinstance(entry, Mapping) and "ratio" in entry]
        worst = max(drift, key=lambda entry: abs(float(entry["ratio"]) - 1)) if drift else None
        flagged.append({
            "run_id": run.run_id,
            "status": run.status,
            "measured": sum(int(count) for count in (report.get("measured_per_op") or {}).values()),
            "stopped_by": report.get("stopped_by") or "",
            "reference_ms": report.get("reference_ms"),
            "drift_checks": len(drift),
            "worst_drift_ratio": float(worst["ratio"]) if worst else None,
            "worst_drift_at_s": float(worst.get("elapsed_s", 0.0)) if worst else None,
            "flat_axes": {op: list(axes) for op, axes in sorted((report.get("flat_axes") or {}).items())},
        })
    return flagged
