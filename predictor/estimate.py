"""Estimating a model's latency on a device: table hit, else the op type's regressor, else a stated fallback.

Model latency = sum of kernel latencies + the device's learned overhead (per run and per kernel).
No kernel is ever counted as 0 ms: every kernel gets a latency and a `source` saying where it came from.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from predictor.features import FEATURE_NAMES, features_matrix
from predictor.kernels import Kernel, KernelKey
from predictor.store import Device, iter_measurements, list_runs

__all__ = ["DevicePredictor", "Estimate", "KernelEstimate", "flat_axes_of"]

logger = logging.getLogger(__name__)

# Relative half-width of the interval around a table hit: the measured p10/p90 spread is per-run
# noise, the in-model cost differs by more; the figure is the held-out spread seen in validation.
_TABLE_INTERVAL = 0.05
_FALLBACK_INTERVAL = 0.5
_MEMO_ENTRIES = 200_000
# A key's latency, interval and source, before they are wrapped into a KernelEstimate.
_Value = tuple[float, float, float, str]


@dataclass(frozen=True)
class KernelEstimate:
    """One kernel's predicted latency and where the number came from (table, regressor, fallback)."""

    name: str
    op_type: str
    latency_ms: float
    interval_ms: tuple[float, float]
    source: str
    key: KernelKey
    nodes: tuple[str, ...] = ()

    @property
    def key_hash(self) -> str:
        return self.key.key_hash

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "latency_ms": self.latency_ms,
            "interval_ms": list(self.interval_ms),
            "source": self.source,
            "key_hash": self.key_hash,
            "nodes": list(self.nodes),
        }


@dataclass(frozen=True)
class Estimate:
    """A model's predicted latency on a device, with the per-kernel breakdown."""

    device: str
    latency_ms: float
    interval_ms: tuple[float, float]
    table_hit_rate: float
    overhead_ms: float
    kernels: list[KernelEstimate]
    warnings: list[str] = field(default_factory=list)

    @property
    def sources(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kernel in self.kernels:
            counts[kernel.source] = counts.get(kernel.source, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "latency_ms": self.latency_ms,
            "interval_ms": list(self.interval_ms),
            "table_hit_rate": self.table_hit_rate,
            "overhead_ms": self.overhead_ms,
            "sources": self.sources,
            "warnings": list(self.warnings),
            "kernels": [k.to_dict() for k in self.kernels],
        }


def flat_axes_of(session: Session, device: Device) -> dict[str, list[str]]:
    """Axes that proved flat per op type in the device's profiling runs (latest report wins)."""
    flat: dict[str, list[str]] = {}
    for run in list_runs(session, device):
        report = run.report or {}
        for op_type, axes in (report.get("flat_axes") or {}).items():
            flat[op_type] = sorted(set(axes))
    return flat


class DevicePredictor:
    """Everything needed to predict on one device, loaded once from the store."""

    def __init__(
        self,
        device: str,
        table: Mapping[str, float],
        regressors: Any = None,
        overhead: Mapping[str, float] | None = None,
        flat_axes: Mapping[str, Sequence[str]] | None = None,
        fallback: Sequence[float] | None = None,
    ) -> None:
        self.device = device
        self.table = dict(table)
        self.regressors = regressors
        self.overhead = dict(overhead or {})
        self.flat_axes = {op: set(axes) for op, axes in (flat_axes or {}).items()}
        self.fallback = tuple(fallback) if fallback is not None else None
        # Looked up by the key itself (tuple hashing) before falling back to the canonical-JSON hash,
        # which costs a JSON encoding and a sha256 per key: the hot path of ranking fresh configs.
        self.by_key: dict[KernelKey, float] = {}
        # The reference kernel's time in the device's baseline state, which the table is scaled to.
        self.reference_ms: float | None = None
        # What each key and each kernel came to (see _memo): ranking asks about the same kernels over and
        # over, so each is looked up, predicted and wrapped in a KernelEstimate once.
        self._by_key_memo: dict[KernelKey, _Value] = {}
        self._by_kernel_memo: dict[int, tuple[Kernel, KernelEstimate]] = {}
        self._memo_basis: tuple[Any, ...] = ()

    @classmethod
    def load(cls, session: Session, device: Device) -> DevicePredictor:
        from predictor.regressors import RegressorSet

        # One read of the table: the lookup, the keys and the fallback all see the same snapshot even
        # while an agent is uploading (median of medians where a key was measured in several runs).
        medians: dict[str, list[float]] = {}
        keys: dict[str, KernelKey] = {}
        for measurement in iter_measurements(session, device):
            medians.setdefault(measurement.key_hash, []).append(measurement.median_ms)
            if measurement.key_hash not in keys:
                keys[measurement.key_hash] = KernelKey.from_dict(measurement.key)
        table = {key_hash: float(np.median(values)) for key_hash, values in medians.items()}
        regressors = RegressorSet.load(session, device)
        predictor = cls(
            device=device.name,
            table=table,
            regressors=regressors if regressors.op_types else None,
            overhead=device.overhead or {},
            flat_axes=flat_axes_of(session, device),
            fallback=fit_bandwidth_fallback([(keys[h], table[h]) for h in table]),
        )
        predictor.by_key = {keys[key_hash]: value for key_hash, value in table.items()}
        reports = [run.report or {} for run in list_runs(session, device)]
        references = [float(report.get(field)) for report in reports
                      for field in ("baseline_reference_ms", "reference_ms")
                      if isinstance(report.get(field), (int, float)) and report.get(field) > 0]
        # Runs timed by thread CPU time are not scaled to a baseline state (profiler.runner), so
        # measurements held against such a table are not scaled either.
        scaled = not any(report.get("clock") == "thread_cpu" for report in reports)
        predictor.reference_ms = min(references) if references and scaled else None
        return predictor

    @property
    def measurement_count(self) -> int:
        return len(self.table)

    def _lookup(self, key: KernelKey) -> float | None:
        """The measured median of a key; a key on a proven-flat axis is looked up at the axis' base value."""
        if key.sparsity and "sparsity" in self.flat_axes.get(key.op_type, ()):
            key = replace(key, sparsity=0.0, sparsity_pattern="dense")
        if self.by_key:  # holds every key of the table
            return self.by_key.get(key)
        return self.table.get(key.key_hash)

    def estimate(self, kernels: Sequence[Kernel]) -> Estimate:
        """Predict every kernel, sum them and add the device's overhead."""
        return self.estimate_many([kernels])[0]

    def estimate_many(self, kernel_lists: Sequence[Sequence[Kernel]]) -> list[Estimate]:
        """Estimates for many kernel lists (candidate configs), with one regressor call per op type for all.

        Each distinct key is looked up (or predicted) once, however many lists name it, and kept for the
        next call: a key's table value, regressor prediction and fallback never change for a loaded predictor.
        """
        by_key, by_kernel = self._memo()
        results: list[list[KernelEstimate | None]] = []
        # Keys neither in the memo nor in the table, with the places (list, index) that name them.
        misses: dict[str, dict[KernelKey, list[tuple[int, int]]]] = {}
        for list_index, kernels in enumerate(kernel_lists):
            row: list[KernelEstimate | None] = []
            for kernel in kernels:
                known = by_kernel.get(id(kernel))
                if known is not None and known[0] is kernel:
                    row.append(known[1])
                    continue
                key = kernel.key
                value = by_key.get(key)
                if value is None:
                    measured = self._lookup(key)
                    if measured is None:
                        misses.setdefault(key.op_type, {}).setdefault(key, []).append((list_index, len(row)))
                        row.append(None)
                        continue
                    value = (measured, measured * (1 - _TABLE_INTERVAL), measured * (1 + _TABLE_INTERVAL), "table")
                    by_key[key] = value
                row.append(self._remember(kernel, value, by_kernel))
            results.append(row)
        for op_type, places_by_key in misses.items():
            keys = list(places_by_key)
            if self.regressors is not None and self.regressors.has(op_type):
                median, low, high = self.regressors.predict(keys)
                values = [(float(m), float(lo), float(hi), "regressor") for m, lo, hi in zip(median, low, high,
                                                                                            strict=True)]
            else:
                values = []
                for fallback_ms in self._fallback_many(keys):
                    values.append((fallback_ms, fallback_ms * (1 - _FALLBACK_INTERVAL),
                                   fallback_ms * (1 + _FALLBACK_INTERVAL), "fallback"))
            for key, value in zip(keys, values, strict=True):
                by_key[key] = value
                for i, j in places_by_key[key]:
                    results[i][j] = self._remember(kernel_lists[i][j], value, by_kernel)
        estimates = []
        fallback_lists: dict[str, list[int]] = {}
        for row in results:
            complete = [e for e in row if e is not None]
            counts: dict[str, int] = {}
            for kernel_estimate in complete:
                if kernel_estimate.source == "fallback":
                    counts[kernel_estimate.op_type] = counts.get(kernel_estimate.op_type, 0) + 1
            warnings = [f"no measurements or regressor for {op_type} on {self.device}: {count} kernel(s) predicted "
                        "by the bandwidth fallback" for op_type, count in sorted(counts.items())]
            for op_type, count in counts.items():
                fallback_lists.setdefault(op_type, []).append(count)
            estimates.append(self._total(complete, warnings))
        if len(estimates) == 1:
            for warning in estimates[0].warnings:
                logger.warning(warning)
        else:
            # One log line per op type for the whole call, not one per kernel list (a rank of 100 candidates
            # would write a thousand); each Estimate still carries its own warnings.
            for op_type, counts_per_list in sorted(fallback_lists.items()):
                logger.warning("no measurements or regressor for %s on %s: %d kernel(s) in %d of %d kernel lists "
                               "predicted by the bandwidth fallback", op_type, self.device, sum(counts_per_list),
                               len(counts_per_list), len(kernel_lists))
        return estimates

    def _memo(self) -> tuple[dict[KernelKey, _Value], dict[int, tuple[Kernel, KernelEstimate]]]:
        """The memos, emptied if what they were computed from was replaced (or grew too large)."""
        basis = (id(self.table), len(self.table), id(self.by_key), len(self.by_key), id(self.regressors),
                 self.fallback, id(self.flat_axes), id(self.overhead))
        if basis != self._memo_basis or len(self._by_key_memo) > _MEMO_ENTRIES \
                or len(self._by_kernel_memo) > _MEMO_ENTRIES:
            self._by_key_memo, self._by_kernel_memo = {}, {}
            self._memo_basis = basis
        return self._by_key_memo, self._by_kernel_memo

    @staticmethod
    def _remember(kernel: Kernel, value: _Value,
                  by_kernel: dict[int, tuple[Kernel, KernelEstimate]]) -> KernelEstimate:
        estimate = _kernel_estimate(kernel, *value)
        # Keyed by identity (no key hashing); the entry holds the kernel, so its id cannot be reused meanwhile.
        by_kernel[id(kernel)] = (kernel, estimate)
        return estimate

    def _total(self, estimates: list[KernelEstimate], warnings: list[str]) -> Estimate:
        per_run = float(self.overhead.get("per_run_ms", 0.0))
        per_kernel = float(self.overhead.get("per_kernel_ms", 0.0))
        scale = float(self.overhead.get("kernel_scale", 1.0))
        overhead_ms = per_run + per_kernel * len(estimates)
        total = scale * sum(e.latency_ms for e in estimates) + overhead_ms
        low = scale * sum(e.interval_ms[0] for e in estimates) + overhead_ms
        high = scale * sum(e.interval_ms[1] for e in estimates) + overhead_ms
        hits = sum(1 for e in estimates if e.source == "table")
        return Estimate(
            device=self.device,
            latency_ms=total,
            interval_ms=(low, high),
            table_hit_rate=hits / len(estimates) if estimates else 0.0,
            overhead_ms=overhead_ms,
            kernels=estimates,
            warnings=warnings,
        )

    def _fallback_ms(self, key: KernelKey) -> float:
        return self._fallback_many([key])[0]

    def _fallback_many(self, keys: Sequence[KernelKey]) -> list[float]:
        """The bandwidth fallback of each key (one feature matrix for all)."""
        values = []
        for bytes_moved, macs in _fallback_features_many(keys):
            if self.fallback is None:
                # No data at all on this device: a memory-bound guess at 5 GB/s plus 5 us of dispatch.
                values.append(0.005 + bytes_moved / 5e6)
                continue
            intercept, per_byte, per_mac = self.fallback
            values.append(max(1e-4, intercept + per_byte * bytes_moved + per_mac * macs))
        return values


_BYTES_COLUMN = FEATURE_NAMES.index("bytes_moved")
_MACS_COLUMN = FEATURE_NAMES.index("macs")


def _fallback_features_many(keys: Sequence[KernelKey]) -> list[tuple[float, float]]:
    """(bytes moved, MACs) of each key; rows of one matrix equal the rows computed one key at a time."""
    matrix = features_matrix(keys)
    return [(float(row[_BYTES_COLUMN]), float(row[_MACS_COLUMN])) for row in matrix]


def fit_bandwidth_fallback(rows: Sequence[tuple[KernelKey, float]]) -> tuple[float, float, float] | None:
    """latency = a + b x bytes + c x MACs, non-negative least squares over all of the device's kernels."""
    if len(rows) < 3:
        return None
    features = np.array([[1.0, *pair] for pair in _fallback_features_many([key for key, _ in rows])])
    target = np.array([latency for _, latency in rows])
    try:
        from scipy.optimize import nnls

        coefficients, _ = nnls(features / features.max(axis=0).clip(min=1e-12), target)
        coefficients = coefficients / features.max(axis=0).clip(min=1e-12)
    except ImportError:
        coefficients, *_ = np.linalg.lstsq(features, target, rcond=None)
        coefficients = np.clip(coefficients, 0, None)
    intercept, per_byte, per_mac = (float(c) for c in coefficients)
    if not all(math.isfinite(c) for c in (intercept, per_byte, per_mac)):
        return None
    return intercept, per_byte, per_mac


def _kernel_estimate(kernel: Kernel, latency: float, low: float, high: float, source: str) -> KernelEstimate:
    latency = max(latency, 1e-6)
    return KernelEstimate(
        name=kernel.name,
        op_type=kernel.op_type,
        latency_ms=latency,
        interval_ms=(min(low, latency), max(high, latency)),
        source=source,
        key=kernel.key,
        nodes=kernel.nodes,
    )
