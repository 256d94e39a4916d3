"""The device's overhead outside kernels and its context effect, learned from end-to-end runs of real models.

measured_ms ~ per_run_ms + per_kernel_ms x kernels + kernel_scale x sum(kernel medians in the model's context),
fitted by non-negative least squares over the end-to-end samples the profiler recorded in its run reports.
A kernel's median is put into the sample's context by predictor.estimation.context's model, whose beta, base and width
are chosen on a grid by the same fit (beta 0, no context effect, unless a setting predicts the samples
better by a margin).
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sqlalchemy.orm import Session

from predictor.estimation.context import ContextModel, measurement_contexts, report_samples, sensitivity
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import KernelKey
from predictor.records import RunReport, reports_of
from predictor.store import Device, iter_measured_medians, list_runs, set_overhead

__all__ = [
    "CONTEXT_GRID",
    "ContextSamples",
    "choose_context",
    "choose_context_from_probes",
    "context_samples",
    "fit_overhead",
    "probe_rows",
]

logger = logging.getLogger(__name__)

_MIN_SAMPLES = 3
# A context model is kept only if it lowers the fit's weighted MAPE by this share of it: a grid of
# settings finds a small gain in noise alone.
_MIN_GAIN = 0.05
CONTEXT_GRID: dict[str, tuple[float, ...]] = {
    "beta": (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0),
    "base_mb": (2.0, 4.0, 8.0, 12.0, 16.0, 24.0, 32.0),
    "width_octaves": (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0),
}
# The calibration probes (profiler.calibration) must explain this share of their log deviations for a
# context model to be kept.
_MIN_PROBE_GAIN = 0.5
_BYTES = FEATURE_NAMES.index("bytes_moved")
_MACS = FEATURE_NAMES.index("macs")


@dataclass
class ContextSamples:
    """The end-to-end samples whose kernels are all in the table, flattened for the fit.

    Kernel i of the flattened list belongs to sample `sample_of[i]`; `median_ms`, `sensitivity` and
    `measured_context` (bytes) are the table's, `model_context` (bytes) the sample's.
    """

    measured_ms: np.ndarray
    kernel_counts: np.ndarray
    sample_of: np.ndarray
    median_ms: np.ndarray
    sensitivity: np.ndarray
    measured_context: np.ndarray
    model_context: np.ndarray
    contexts: dict[str, float]
    median_context: float

    def kernel_sums(self, model: ContextModel | None) -> np.ndarray:
        """Each sample's sum of kernel medians, each put into the sample's context by `model`."""
        values = self.median_ms
        if model is not None:
            values = values * (model.factors(self.sensitivity, self.model_context)
                               / model.factors(self.sensitivity, self.measured_context))
        return np.bincount(self.sample_of, weights=values, minlength=len(self.measured_ms))


def context_samples(session: Session, device: Device) -> ContextSamples:
    """The device's end-to-end samples with their kernels' table medians, sensitivities and contexts."""
    hashes: list[str] = []
    keys: list[KernelKey] = []
    runs_of: dict[str, list[float]] = {}
    for key_hash, key, median_ms in iter_measured_medians(session, device):
        if key_hash not in runs_of:
            runs_of[key_hash] = []
            hashes.append(key_hash)
            keys.append(KernelKey.from_dict(key))
        runs_of[key_hash].append(median_ms)
    features = features_matrix(keys, cached=False) if keys else np.zeros((0, len(FEATURE_NAMES)))
    index = {key_hash: i for i, key_hash in enumerate(hashes)}
    medians = np.array([float(np.median(runs_of[h])) for h in hashes])
    moved = features[:, _BYTES]
    sens = sensitivity(moved, features[:, _MACS])
    reports = reports_of(list_runs(session, device))
    sample_hashes_of = report_samples(reports)
    samples = [(list(timing.kernel_hashes), timing.measured_ms) for report in reports for timing in report.end_to_end
               if timing.measured_ms is not None]
    contexts = measurement_contexts(sample_hashes_of, dict(zip(hashes, moved.tolist(), strict=True)))
    median_context = float(np.median(list(contexts.values()))) if contexts else 0.0
    measured: list[float] = []
    counts: list[float] = []
    sample_of: list[int] = []
    kernel_index: list[int] = []
    model_context: list[float] = []
    for sample_hashes, measured_ms in samples:
        if not sample_hashes or any(h not in index for h in sample_hashes):
            continue
        positions = [index[h] for h in sample_hashes]
        sample_of.extend([len(measured)] * len(positions))
        kernel_index.extend(positions)
        model_context.extend([float(moved[positions].sum())] * len(positions))
        measured.append(measured_ms)
        counts.append(float(len(positions)))
    kernels = np.array(kernel_index, dtype=np.intp)
    return ContextSamples(
        measured_ms=np.array(measured), kernel_counts=np.array(counts), sample_of=np.array(sample_of, dtype=np.intp),
        median_ms=medians[kernels], sensitivity=sens[kernels],
        measured_context=np.array([contexts.get(hashes[i], median_context) for i in kernels]),
        model_context=np.array(model_context), contexts=contexts, median_context=median_context)


def _fit_linear(counts: np.ndarray, kernel_sums: np.ndarray, measured: np.ndarray) -> tuple[np.ndarray, float]:
    """(per_run, per_kernel, scale) and the weighted MAPE of measured ~ them."""
    from scipy.optimize import nnls

    design = np.column_stack([np.ones(len(measured)), counts, kernel_sums])
    # Relative errors matter (a 1 ms and a 100 ms model count alike): weight rows by 1/measured.
    weights = 1.0 / measured
    coefficients, _ = nnls(design * weights[:, None], measured * weights)
    predicted = design @ coefficients
    return coefficients, float(np.mean(np.abs(predicted - measured) / measured))


def choose_context(samples: ContextSamples, grid: Mapping[str, Sequence[float]] = CONTEXT_GRID
                   ) -> tuple[ContextModel | None, np.ndarray, float, float]:
    """The grid's best context model (None if none gains enough), its coefficients, its MAPE and beta 0's."""
    base_coefficients, base_mape = _fit_linear(samples.kernel_counts, samples.kernel_sums(None), samples.measured_ms)
    best: tuple[ContextModel | None, np.ndarray, float] = (None, base_coefficients, base_mape)
    for beta, base_mb, width in itertools.product(grid["beta"], grid["base_mb"], grid["width_octaves"]):
        model = ContextModel(beta, base_mb, width)
        coefficients, mape = _fit_linear(samples.kernel_counts, samples.kernel_sums(model), samples.measured_ms)
        if mape < best[2]:
            best = (model, coefficients, mape)
    if best[0] is not None and best[2] > base_mape * (1 - _MIN_GAIN):
        return None, base_coefficients, base_mape, base_mape
    return best[0], best[1], best[2], base_mape


def probe_rows(reports: Sequence[RunReport]) -> list[dict[str, Any]]:
    """The context calibration rows (profiler.calibration) of run reports."""
    return [dict(row) for report in reports for row in report.context_probes]


def choose_context_from_probes(rows: Sequence[Mapping[str, Any]], grid: Mapping[str, Sequence[float]] = CONTEXT_GRID
                               ) -> tuple[ContextModel | None, dict[str, float]]:
    """The grid's context model that best explains each probe's slowdown beside growing chains.

    Per probe, the median ratio (probe over reference) at each chain is taken over the rounds; its log
    over the ratio at the smallest chain is the observed slowdown, the model's is the log of its factors'
    ratio. Returns the model (None if it explains less than half the squared log slowdowns) and the fit's
    figures.
    """
    by_probe: dict[str, dict[float, list[tuple[float, float, float]]]] = {}
    for row in rows:
        by_probe.setdefault(str(row["probe"]), {}).setdefault(float(row["chain"]), []).append(
            (float(row["ratio"]), float(row["traffic_bytes"]), float(row["sensitivity"])))
    observed, traffic, base_traffic, sens = [], [], [], []
    for chains in by_probe.values():
        if len(chains) < 2:
            continue
        medians = {chain: (float(np.median([v[0] for v in values])), values[0][1], values[0][2])
                   for chain, values in chains.items()}
        first = medians[min(medians)]
        for chain, (ratio, chain_traffic, probe_sensitivity) in medians.items():
            if chain == min(medians) or ratio <= 0 or first[0] <= 0:
                continue
            observed.append(math.log(ratio / first[0]))
            traffic.append(chain_traffic)
            base_traffic.append(first[1])
            sens.append(probe_sensitivity)
    if not observed:
        return None, {}
    slowdowns, at, at_base, kernel_sensitivity = (np.array(v) for v in (observed, traffic, base_traffic, sens))
    total = float(np.sum(slowdowns ** 2))
    best: tuple[float, ContextModel | None] = (total, None)
    for beta, base_mb, width in itertools.product(grid["beta"], grid["base_mb"], grid["width_octaves"]):
        model = ContextModel(beta, base_mb, width)
        predicted = np.log(model.factors(kernel_sensitivity, at) / model.factors(kernel_sensitivity, at_base))
        error = float(np.sum((slowdowns - predicted) ** 2))
        if error < best[0]:
            best = (error, model)
    explained = 1.0 - best[0] / total if total > 0 else 0.0
    figures = {"probe_points": float(len(slowdowns)), "explained": explained,
               "max_slowdown": float(np.exp(slowdowns.max()))}
    return (best[1] if explained >= _MIN_PROBE_GAIN else None), figures


def fit_overhead(session: Session, device: Device, *, context: ContextModel | None | Literal["fit"] = "fit"
                 ) -> dict[str, Any] | None:
    """Fit and store the device's overhead and context model; None when there are too few end-to-end samples.

    `context` other than "fit" is taken as the device's context model (None: no context effect) and only
    the overhead's coefficients are fitted with it (what benchmarks compare settings with).
    """
    samples = context_samples(session, device)
    if len(samples.measured_ms) < _MIN_SAMPLES:
        return None
    probes = probe_rows(reports_of(list_runs(session, device)))
    probe_figures: dict[str, float] = {}
    chosen_by = "given"
    if context == "fit" and probes:
        # The calibration measured the effect where the profiled models say little: it decides.
        context, probe_figures = choose_context_from_probes(probes)
        chosen_by = "calibration"
    if context == "fit":
        chosen_by = "end_to_end"
        model, coefficients, mape, mape_without = choose_context(samples)
    else:
        model = context if context is not None and context.active else None
        coefficients, mape = _fit_linear(samples.kernel_counts, samples.kernel_sums(model), samples.measured_ms)
        mape_without = _fit_linear(samples.kernel_counts, samples.kernel_sums(None), samples.measured_ms)[1]
    per_run, per_kernel, scale = (float(c) for c in coefficients)
    overhead: dict[str, Any] = {"per_run_ms": per_run, "per_kernel_ms": per_kernel, "kernel_scale": scale,
                                "samples": len(samples.measured_ms), "fit_mape": mape,
                                "fit_mape_without_context": mape_without}
    if model is not None:
        overhead["context"] = {**model.to_dict(), "median_context_mb": samples.median_context / 1e6,
                               "chosen_by": chosen_by}
    if probe_figures:
        overhead["context_calibration"] = probe_figures
    set_overhead(session, device, overhead)
    logger.info("overhead of %s: %s", device.name, overhead)
    return overhead
