"""What the dashboard shows about a device, computed from its store's aggregates: coverage, chart series, run flags.

Nothing here reads a device's measurement rows or parses a key: coverage comes from SQL aggregates over the
device's measured kernels (predictor.store.aggregates), the charts from a sample of them. A key measured in
several runs counts once, at the median of its runs' medians (as the predictor's lookup table does). Pure
functions over plain rows, so the numbers are testable without a browser.
"""
from __future__ import annotations

import logging
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from predictor.records import reports_of
from predictor.store import KernelPointRow, Tally
from predictor.store.summary import op_family

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
_SPARSITY_DECIMALS = 2


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


@dataclass(frozen=True)
class KernelPoint:
    """One measured kernel (distinct key) of a device: what the charts plot.

    `shape` names the kernel's shape (predictor.store.summary.shape_hash_of): equal for the fp32, int8 and sparse
    kernels of one layer shape, which the speedup charts pair.
    """

    op_type: str
    family: str
    bits: int
    sparsity: float
    sparsity_pattern: str
    macs: float
    latency_ms: float
    runs: int
    shape: str

    @classmethod
    def from_row(cls, row: KernelPointRow) -> KernelPoint:
        return cls(op_type=row.op_type, family=op_family(row.op_type), bits=row.bits,
                   sparsity=round(row.sparsity, _SPARSITY_DECIMALS), sparsity_pattern=row.sparsity_pattern,
                   macs=row.macs, latency_ms=row.latency_ms, runs=row.runs, shape=row.shape_hash)

    @property
    def is_dense(self) -> bool:
        return self.sparsity == 0.0 and self.sparsity_pattern != "2:4"


def kernel_points(rows: Iterable[KernelPointRow]) -> list[KernelPoint]:
    """The charts' points of measured kernels the store read (predictor.store.sample_kernel_points)."""
    return [KernelPoint.from_row(row) for row in rows]


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


def op_coverage(tallies: Sequence[Tally], groups: Sequence[tuple[str, int, float | None, int, float | None,
                                                                 float | None]],
                shapes: Mapping[str, int], regressors: Mapping[str, RegressorRow],
                flat_axes: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One row per op type: measurement rows, distinct kernels, shapes, bit-widths, sparsities, MACs range, regressor.

    `tallies` are the device's (predictor.store.read_tallies), `groups` its measured kernels grouped by op type, bits
    and sparsity (predictor.store.coverage_rows), `shapes` its distinct shapes per op type. Kernels the store has no
    summary of (keys no predictor can use) count as measurement rows only.
    """
    rows_per_op: defaultdict[str, int] = defaultdict(int)
    for tally in tallies:
        rows_per_op[tally.op_type] += tally.measurements
    kernels: defaultdict[str, int] = defaultdict(int)
    bits: defaultdict[str, set[int]] = defaultdict(set)
    sparsities: defaultdict[str, set[float]] = defaultdict(set)
    macs_low: dict[str, float] = {}
    macs_high: dict[str, float] = {}
    for op_type, group_bits, sparsity, count, low, high in groups:
        if sparsity is None:
            continue
        kernels[op_type] += count
        bits[op_type].add(group_bits)
        sparsities[op_type].add(round(sparsity, _SPARSITY_DECIMALS))
        if low is not None and high is not None:
            macs_low[op_type] = min(low, macs_low.get(op_type, low))
            macs_high[op_type] = max(high, macs_high.get(op_type, high))
    coverage = []
    for op_type in sorted(set(rows_per_op) | set(kernels) | set(regressors)):
        metrics = dict(regressors[op_type].metrics or {}) if op_type in regressors else None
        coverage.append({
            "op_type": op_type,
            "family": op_family(op_type),
            "measurements": int(rows_per_op.get(op_type, 0)),
            "kernels": kernels.get(op_type, 0),
            "shapes": int(shapes.get(op_type, 0)),
            "bits": sorted(bits.get(op_type, ()), reverse=True),
            "sparsities": sorted(sparsities.get(op_type, ())),
            "macs_min": macs_low.get(op_type),
            "macs_max": macs_high.get(op_type),
            "regressor": metrics,
            "flat_axes": sorted(flat_axes.get(op_type, [])),
        })
    return coverage


def latency_vs_macs(points: Sequence[KernelPoint], max_points: int, total: int | None = None) -> dict[str, Any]:
    """Scatter series per op type, MACs > 0 only (log axes); evenly thinned to at most max_points in all.

    `total`: how many such kernels the device has, where `points` are a sample of its kernels.
    """
    plotted = [point for point in points if point.macs > 0 and point.latency_ms > 0]
    step = max(1, math.ceil(len(plotted) / max_points)) if max_points > 0 else 1
    shown = plotted[::step]
    series: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for point in shown:
        series[point.op_type].append({"macs": point.macs, "latency_ms": point.latency_ms, "bits": point.bits,
                                      "sparsity": point.sparsity})
    return {"series": [{"op_type": op_type, "points": series[op_type]} for op_type in sorted(series)],
            "total": len(plotted) if total is None else total, "shown": len(shown)}


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
    """Per run: status, kernels measured, stop reason, drift checks over threshold, the worst drift ratio and the
    models measured again after a spell of the host."""
    flagged = []
    for run, report in zip(runs, reports_of(runs), strict=True):
        drift = [entry for entry in report.drift if "ratio" in entry]
        worst = max(drift, key=lambda entry: abs(float(entry["ratio"]) - 1)) if drift else None
        flagged.append({
            "run_id": run.run_id,
            "status": run.status,
            "measured": sum(report.measured_per_op.values()),
            "stopped_by": report.stopped_by,
            "reference_ms": report.reference_ms,
            "drift_checks": len(drift),
            "worst_drift_ratio": float(worst["ratio"]) if worst else None,
            "worst_drift_at_s": float(worst.get("elapsed_s", 0.0)) if worst else None,
            "remeasured": len(report.remeasured),
            "flat_axes": {op: list(axes) for op, axes in sorted(report.flat_axes.items())},
        })
    return flagged
