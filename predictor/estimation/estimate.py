"""Estimating a model's latency on a device: table hit, else the op type's regressor, else a stated fallback.

Model latency = sum of kernel latencies + the device's learned overhead (per run and per kernel).
Where the device's overhead fit found a context effect (predictor.estimation.context), the table and the regressors hold
context-free latencies and each kernel is put into the context of the model it is predicted for.
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

from predictor.errors import UnknownDeviceError
from predictor.estimation.context import ContextModel, measurement_contexts, report_samples, sensitivity
from predictor.estimation.results import Estimate, KernelEstimate
from predictor.estimation.table import MeasuredRows, MeasuredTable
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import Kernel, KernelKey
from predictor.memo import BoundedMemo
from predictor.records import RunReport, reports_of
from predictor.runtime.devices import DeviceKernels, kernels_for_device
from predictor.runtime.optimizer import RuntimeSpec, local_runtime
from predictor.store import Device, ProfilingRun, TableVersion, list_runs, read_device_version, read_measured_rows

__all__ = [
    "DevicePredictor",
    "Estimate",
    "EstimateSummary",
    "KernelEstimate",
    "baselines_of",
    "device_baselines",
    "flat_axes_of",
]

logger = logging.getLogger(__name__)

# Relative half-width of the interval around a table hit: the measured p10/p90 spread is per-run
# noise, the in-model cost differs by more; the figure is the held-out spread seen in validation.
_TABLE_INTERVAL = 0.05
_FALLBACK_INTERVAL = 0.5
# A prediction whose fallback kernels (no measurement, no regressor) carry more than this share of its time is
# marked unreliable.
_UNRELIABLE_FALLBACK_SHARE = 0.1
# Memoized keys per loaded predictor: bounded memory (predictor.memo).
_MEMO_ENTRIES = 50_000
# Measured kernels the bandwidth fallback is fitted on at most (an even sample of larger tables).
_FALLBACK_FIT_ROWS = 200_000
# A kernel of at most this many MACs per byte it moves is memory-bound: its fallback is fitted on the measured
# kernels of that kind alone. One fit over every kernel takes its cost per byte from the convs and matmuls that
# dominate a table, and put a T5 encoder's ReLU over 1 MB at 0.62 ms where it ran at 0.03 ms.
_MEMORY_BOUND_MACS_PER_BYTE = 1.0
# A kernel's latency, interval (low, high) and source, as its KernelEstimate states them.
_Value = tuple[float, float, float, str]


@dataclass(frozen=True)
class EstimateSummary:
    """An Estimate without the per-kernel breakdown (what ranking many candidates needs); same figures."""

    device: str
    latency_ms: float
    interval_ms: tuple[float, float]
    table_hit_rate: float
    overhead_ms: float
    sources: dict[str, int]
    warnings: list[str] = field(default_factory=list)
    reliable: bool = True


def flat_axes_of(session: Session, device: Device) -> dict[str, list[str]]:
    """Axes that proved flat per op type in the device's profiling runs (latest report wins)."""
    return _flat_axes(list_runs(session, device))


def _flat_axes(runs: Sequence[ProfilingRun]) -> dict[str, list[str]]:
    flat: dict[str, list[str]] = {}
    for report in reports_of(runs):
        for op_type, axes in report.flat_axes.items():
            flat[op_type] = sorted(set(axes))
    return flat


def device_baselines(session: Session, device: Device) -> dict[str, float]:
    """The reference kernels' times in the device's baseline state, by kind (empty where its table is not scaled):
    what a measurement is scaled by to be held against the device's predictions
    (predictor.estimation.validation.compensate)."""
    return baselines_of(reports_of(list_runs(session, device)))


def baselines_of(reports: Sequence[RunReport]) -> dict[str, float]:
    """The baseline state of a table profiled by these runs: each run scales to the first run's reference time
    (profiler.runner). Unpaired runs timed by thread CPU time are not scaled, and then neither is anything held
    against them (no baselines)."""
    scaled = all(report.paired or report.clock != "thread_cpu" for report in reports)
    return _reference_baselines(reports) if scaled else {}


def _reference_baselines(reports: Sequence[RunReport]) -> dict[str, float]:
    """Each reference kind's baseline time as the latest run report holding it names it."""
    baselines: dict[str, float] = {}
    for report in reports:
        for kind in {"fp32", *report.baseline_references}:
            value = report.reference_of(kind)
            if value is not None:
                baselines[kind] = value
    return baselines


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
        context: ContextModel | None = None,
        memory_fallback: Sequence[float] | None = None,
    ) -> None:
        self.device = device
        # A MeasuredTable (compact arrays) is kept as it is; any other mapping of key hash -> ms is copied
        # into one, whose lookups then compute each asked key's hash.
        self.table = table if isinstance(table, MeasuredTable) else MeasuredTable.from_medians(table)
        self.regressors = regressors
        self.overhead = dict(overhead or {})
        self.flat_axes = {op: set(axes) for op, axes in (flat_axes or {}).items()}
        # The bandwidth fallback (intercept, ms per byte, ms per MAC) of kernels no table or regressor covers:
        # `memory_fallback` for memory-bound ones (_MEMORY_BOUND_MACS_PER_BYTE) where fitted, `fallback` otherwise.
        self.fallback = tuple(fallback) if fallback is not None else None
        self.memory_fallback = tuple(memory_fallback) if memory_fallback is not None else None
        # The device's context effect; then table, regressor and fallback values are context-free.
        self.context = context if context is not None and context.active else None
        # The reference kernels' times in the device's baseline state, which the table is scaled to, by kind
        # ("fp32", "int8": profiler.backends.base.REFERENCE_KINDS); reference_ms is the fp32 one's.
        self.reference_baselines: dict[str, float] = {}
        self.reference_ms: float | None = None
        # How this host builds the device's kernels, and for which kinds of model (predictor.runtime.devices); None: as
        # this host's runtime builds them (a predictor made in code, not loaded from the store).
        self.device_kernels: DeviceKernels | None = None
        # What each key came to (see _memo): ranking asks about the same kernels over and over, so each key
        # is looked up or predicted once.
        self._by_key_memo: BoundedMemo[KernelKey, _Value] = BoundedMemo(_MEMO_ENTRIES)
        # Each key's (bytes moved, context sensitivity), kept while a context model is active.
        self._traffic_memo: BoundedMemo[KernelKey, tuple[float, float]] = BoundedMemo(_MEMO_ENTRIES)
        self._memo_basis: tuple[Any, ...] = ()
        # What a predictor loaded from the store was built from (None: made in code): see `updated`.
        self.version: TableVersion | None = None
        self._rows: MeasuredRows | None = None
        self._state: _DeviceState | None = None

    @classmethod
    def load(cls, session: Session, device: Device) -> DevicePredictor:
        """The device's predictor as the store has it now.

        Reads the device's measured kernels (one row per key, the median of its runs' medians and the key's bytes
        moved and MACs, kept by every upload: predictor.store.aggregates), never its measurement rows, and parses
        no key: the table is looked up by key-hash digest. Remembers what it was built from (`version`), so that
        `updated` reads only what changed since.
        """
        # The version first: whatever changes after it is read again by the next `updated`.
        version = read_device_version(session, device.id)
        if version is None:
            raise UnknownDeviceError(f"unknown device {device.name!r} (id {device.id}); it was deleted")
        rows = read_measured_rows(session, device.id)
        return cls._assemble(device.name, rows, _DeviceState.read(session, device), version)

    def updated(self, session: Session, device: Device) -> DevicePredictor:
        """The predictor as the store has it now, built from this one: itself when nothing changed.

        Measured kernels changed since this one was loaded (new uploads: device.table_seq) are merged into its
        rows; its runs, regressors, overhead and kernel profile are read again only if they changed
        (device.state_version). This one is left as it is (questions being answered with it go on).
        """
        version = read_device_version(session, device.id)
        if version is None:
            raise UnknownDeviceError(f"unknown device {device.name!r} (id {device.id}); it was deleted")
        loaded, rows, state = self.version, self._rows, self._state
        if loaded is None or rows is None or state is None \
                or (loaded.device_id, loaded.registered_at) != (version.device_id, version.registered_at):
            return type(self).load(session, device)
        if version == loaded:
            return self
        if version.table_seq != loaded.table_seq:
            rows = rows.merged(read_measured_rows(session, device.id, after_seq=loaded.table_seq,
                                                  upto_seq=version.table_seq))
        if version.state_version != loaded.state_version:
            state = _DeviceState.read(session, device)
        return type(self)._assemble(device.name, rows, state, version)

    @classmethod
    def _assemble(cls, name: str, rows: MeasuredRows, state: _DeviceState, version: TableVersion) -> DevicePredictor:
        """A predictor of the rows and state: context-free medians, the bandwidth fallback fit, the table."""
        medians = rows.all_medians
        bytes_moved, macs = rows.all_bytes_moved, rows.all_macs
        # Keys the store holds no summary of (not usable kernel keys) are looked up, never fitted on.
        described = np.isfinite(bytes_moved) & np.isfinite(macs)
        target = medians
        if state.context is not None:
            target = medians / _measured_context_factors(state.context, rows, bytes_moved, macs, described,
                                                         state.reports)
        fitted = np.flatnonzero(described)
        if len(fitted) > _FALLBACK_FIT_ROWS:
            # Evenly spread over the rows' digest order (random with respect to the kernels): three coefficients
            # are fitted as well from this many rows as from millions, and a refresh of a big table stays cheap.
            fitted = fitted[np.linspace(0, len(fitted) - 1, _FALLBACK_FIT_ROWS).astype(np.int64)]
        fallback = _fit_bandwidth(np.column_stack([bytes_moved[fitted], macs[fitted]]), target[fitted])
        memory = fitted[_memory_bound(bytes_moved[fitted], macs[fitted])]
        memory_fallback = _fit_bandwidth(np.column_stack([bytes_moved[memory], macs[memory]]), target[memory])
        predictor = cls(
            device=name,
            table=MeasuredTable.from_rows(rows, target),
            regressors=state.regressors,
            overhead=state.overhead,
            flat_axes=state.flat_axes,
            fallback=fallback,
            context=state.context,
            memory_fallback=memory_fallback,
        )
        predictor.reference_baselines = dict(state.baselines)
        predictor.reference_ms = predictor.reference_baselines.get("fp32")
        predictor.device_kernels = state.device_kernels
        predictor.version, predictor._rows, predictor._state = version, rows, state
        return predictor

    @property
    def runtime(self) -> RuntimeSpec | None:
        """The runtime setting this host builds the device's kernels with (None: this host's own)."""
        return self.device_kernels.runtime if self.device_kernels is not None else None

    @property
    def measurement_count(self) -> int:
        return len(self.table)

    def _lookup_many(self, keys: Sequence[KernelKey]) -> list[float | None]:
        """The measured median of each key; a key on a proven-flat axis is looked up at the axis' base value."""
        return self.table.lookup_many([
            replace(key, sparsity=0.0, sparsity_pattern="dense")
            if key.sparsity and "sparsity" in self.flat_axes.get(key.op_type, ()) else key
            for key in keys
        ])

    def estimate(self, kernels: Sequence[Kernel]) -> Estimate:
        """Predict every kernel, sum them and add the device's overhead."""
        return self.estimate_many([kernels])[0]

    def estimate_many(self, kernel_lists: Sequence[Sequence[Kernel]]) -> list[Estimate]:
        """Estimates for many kernel lists (candidate configs), with one regressor call per op type for all."""
        rows = self._values_many([[kernel.key for kernel in kernels] for kernels in kernel_lists])
        estimates = []
        for kernels, (values, totals) in zip(kernel_lists, rows, strict=True):
            kernel_estimates = [
                KernelEstimate(name=kernel.name, op_type=kernel.op_type, latency_ms=value[0],
                               interval_ms=(value[1], value[2]), source=value[3], key_hash=kernel.key.key_hash,
                               nodes=kernel.nodes, key=kernel.key)
                for kernel, value in zip(kernels, values, strict=True)
            ]
            estimates.append(Estimate(device=self.device, latency_ms=totals.latency_ms, interval_ms=totals.interval_ms,
                                      table_hit_rate=totals.table_hit_rate, overhead_ms=totals.overhead_ms,
                                      kernels=kernel_estimates, warnings=totals.warnings, reliable=totals.reliable,
                                      baseline_reference_ms=dict(self.reference_baselines)))
        return estimates

    def summarize_many(self, key_lists: Sequence[Sequence[KernelKey]]) -> list[EstimateSummary]:
        """`estimate_many`'s figures for lists of kernel keys, without building the per-kernel breakdown."""
        return [totals for _, totals in self._values_many(key_lists)]

    def _values_many(self, key_lists: Sequence[Sequence[KernelKey]]) -> list[tuple[list[_Value], EstimateSummary]]:
        """Each kernel's value and each list's totals; each distinct key is looked up or predicted once.

        Values are kept for the next call: a key's table value, regressor prediction and fallback never
        change for a loaded predictor (whose table, regressors and overhead are a snapshot).
        """
        memo = self._memo()
        rows: list[list[_Value]] = []
        # Keys not in the memo, with the places (list, index) that name them: looked up in the table at once.
        unknown: dict[KernelKey, list[tuple[int, int]]] = {}
        for list_index, keys in enumerate(key_lists):
            row: list[_Value] = []
            for key in keys:
                value = memo.get(key)
                if value is None:
                    unknown.setdefault(key, []).append((list_index, len(row)))
                    value = _PENDING
                row.append(value)
            rows.append(row)
        # Keys neither in the memo nor in the table, by op type.
        misses: dict[str, list[KernelKey]] = {}
        for key, measured in zip(unknown, self._lookup_many(list(unknown)), strict=True):
            if measured is None:
                misses.setdefault(key.op_type, []).append(key)
                continue
            value = _value(measured, measured * (1 - _TABLE_INTERVAL), measured * (1 + _TABLE_INTERVAL), "table")
            memo.put(key, value)
            for i, j in unknown[key]:
                rows[i][j] = value
        for op_type, keys in misses.items():
            if self.regressors is not None and self.regressors.has(op_type):
                # Keys are distinct already: one feature matrix and one call of each booster for the op type.
                median, low, high = self.regressors[op_type].predict_features(features_matrix(keys, cached=False))
                values = [_value(float(m), float(lo), float(hi), "regressor")
                          for m, lo, hi in zip(median, low, high, strict=True)]
            else:
                values = [_value(ms, ms * (1 - _FALLBACK_INTERVAL), ms * (1 + _FALLBACK_INTERVAL), "fallback")
                          for ms in self._fallback_many(keys)]
            for key, value in zip(keys, values, strict=True):
                memo.put(key, value)
                for i, j in unknown[key]:
                    rows[i][j] = value
        if self.context is not None:
            rows = self._in_context(self.context, key_lists, rows)
        results = []
        fallback_lists: dict[str, list[int]] = {}
        for keys, row in zip(key_lists, rows, strict=True):
            fallbacks: dict[str, int] = {}
            fallback_ms = 0.0
            unknown_shapes: dict[str, int] = {}
            flat_sparse: dict[str, int] = {}
            for key, value in zip(keys, row, strict=True):
                if value[3] == "fallback":
                    fallbacks[key.op_type] = fallbacks.get(key.op_type, 0) + 1
                    fallback_ms += value[0]
                if any(shape is None for shape in (*key.inputs, *key.outputs)):
                    unknown_shapes[key.op_type] = unknown_shapes.get(key.op_type, 0) + 1
                if key.sparsity and "sparsity" in self.flat_axes.get(key.op_type, ()):
                    flat_sparse[key.op_type] = flat_sparse.get(key.op_type, 0) + 1
            for op_type, count in fallbacks.items():
                fallback_lists.setdefault(op_type, []).append(count)
            warnings = [f"no measurements or regressor for {op_type} on {self.device}: {count} kernel(s) predicted "
                        "by the bandwidth fallback" for op_type, count in sorted(fallbacks.items())]
            if unknown_shapes:
                described = ", ".join(f"{count} {op}" for op, count in sorted(unknown_shapes.items()))
                warnings.append(f"shapes of {sum(unknown_shapes.values())} kernel(s) could not be inferred "
                                f"({described}): their latency is a guess and the prediction is unreliable")
            warnings += [f"sparsity has no effect on {op_type} on {self.device} (measured): {count} sparse kernel(s) "
                         "predicted as dense" for op_type, count in sorted(flat_sparse.items())]
            totals = self._total(row, warnings)
            # A prediction that rests on guesses says so: unknown shapes, or fallbacks carrying a tenth of the time.
            reliable = not unknown_shapes and fallback_ms <= _UNRELIABLE_FALLBACK_SHARE * totals.latency_ms
            results.append((row, replace(totals, reliable=reliable)))
        # The warnings go back with the estimates, and their caller shows them (the CLI prints them, REST answers
        # them): logged as warnings too, the CLI printed each twice.
        if len(results) == 1:
            for warning in results[0][1].warnings:
                logger.debug(warning)
        else:
            # One log line per op type for the whole call, not one per kernel list (a rank of 100 candidates
            # would write a thousand); each estimate still carries its own warnings.
            for op_type, counts in sorted(fallback_lists.items()):
                logger.debug("no measurements or regressor for %s on %s: %d kernel(s) in %d of %d kernel lists "
                             "predicted by the bandwidth fallback", op_type, self.device, sum(counts), len(counts),
                             len(results))
        return results

    def _in_context(self, context: ContextModel, key_lists: Sequence[Sequence[KernelKey]],
                    rows: list[list[_Value]]) -> list[list[_Value]]:
        """Each list's context-free values put into the context of its model (its kernels' traffic)."""
        traffic: dict[KernelKey, tuple[float, float]] = {}
        missing: dict[KernelKey, None] = {}
        for keys in key_lists:
            for key in keys:
                known = self._traffic_memo.get(key)
                if known is None:
                    missing[key] = None
                else:
                    traffic[key] = known
        if missing:
            bytes_and_macs = _fallback_features_array(list(missing))
            kernel_sensitivity = sensitivity(bytes_and_macs[:, 0], bytes_and_macs[:, 1])
            for key, moved, sens in zip(missing, bytes_and_macs[:, 0].tolist(), kernel_sensitivity.tolist(),
                                        strict=True):
                traffic[key] = (moved, sens)
                self._traffic_memo.put(key, (moved, sens))
        placed = []
        for keys, row in zip(key_lists, rows, strict=True):
            pairs = np.array([traffic[key] for key in keys], dtype=np.float64).reshape(-1, 2)
            factors = context.factors(pairs[:, 1], float(pairs[:, 0].sum())).tolist()
            placed.append([(v[0] * f, v[1] * f, v[2] * f, v[3]) for v, f in zip(row, factors, strict=True)])
        return placed

    def _memo(self) -> BoundedMemo[KernelKey, _Value]:
        """The memo, emptied if what it was computed from was replaced."""
        basis = (id(self.table), len(self.table), id(self.regressors), self.fallback, self.memory_fallback,
                 id(self.flat_axes), self.context)
        if basis != self._memo_basis:
            self._by_key_memo = BoundedMemo(_MEMO_ENTRIES)
            self._memo_basis = basis
        return self._by_key_memo

    def _total(self, values: list[_Value], warnings: list[str]) -> EstimateSummary:
        per_run = float(self.overhead.get("per_run_ms", 0.0))
        per_kernel = float(self.overhead.get("per_kernel_ms", 0.0))
        scale = float(self.overhead.get("kernel_scale", 1.0))
        overhead_ms = per_run + per_kernel * len(values)
        total = scale * sum(v[0] for v in values) + overhead_ms
        low = scale * sum(v[1] for v in values) + overhead_ms
        high = scale * sum(v[2] for v in values) + overhead_ms
        sources: dict[str, int] = {}
        for value in values:
            sources[value[3]] = sources.get(value[3], 0) + 1
        return EstimateSummary(
            device=self.device,
            latency_ms=total,
            interval_ms=(low, high),
            table_hit_rate=sources.get("table", 0) / len(values) if values else 0.0,
            overhead_ms=overhead_ms,
            sources=sources,
            warnings=warnings,
        )

    def _fallback_many(self, keys: Sequence[KernelKey]) -> list[float]:
        """The bandwidth fallback of each key (one feature matrix for all; the estimate memo keeps them)."""
        values = []
        for bytes_moved, macs in _fallback_features_many(keys, cached=False):
            if self.fallback is None:
                # No data at all on this device: a memory-bound guess at 5 GB/s plus 5 us of dispatch.
                values.append(0.005 + bytes_moved / 5e6)
                continue
            fit = self.fallback
            if self.memory_fallback is not None and _memory_bound(bytes_moved, macs):
                fit = self.memory_fallback
            intercept, per_byte, per_mac = fit
            values.append(max(1e-4, intercept + per_byte * bytes_moved + per_mac * macs))
        return values


@dataclass(frozen=True)
class _DeviceState:
    """What a predictor reads from the store besides its table; a change to any of it raises the state version."""

    reports: list[RunReport]
    overhead: dict[str, Any]
    flat_axes: dict[str, list[str]]
    regressors: Any
    context: ContextModel | None
    baselines: dict[str, float]
    device_kernels: DeviceKernels

    @classmethod
    def read(cls, session: Session, device: Device) -> _DeviceState:
        from predictor.estimation.regressors import RegressorSet

        runs = list_runs(session, device)
        reports = reports_of(runs)
        regressors = RegressorSet.load(session, device)
        return cls(
            reports=reports,
            overhead=dict(device.overhead or {}),
            flat_axes=_flat_axes(runs),
            regressors=regressors if regressors.op_types else None,
            context=ContextModel.from_overhead(device.overhead),
            baselines=baselines_of(reports),
            device_kernels=kernels_for_device(device.name, device.runtime, device.kernel_profile,
                                              local_runtime(device.threads, device.execution_provider)),
        )


def _measured_context_factors(context: ContextModel, rows: MeasuredRows, bytes_moved: np.ndarray, macs: np.ndarray,
                              described: np.ndarray, reports: Sequence[RunReport]) -> np.ndarray:
    """predictor.estimation.context.measured_context_factors of every row, looking up only the keys the reports'
    samples name (not a dict of every measured key)."""
    samples = report_samples(reports)
    named = sorted({key_hash for sample in samples for key_hash in sample})
    places = rows.positions(named)
    bytes_of = {key_hash: float(bytes_moved[place]) for key_hash, place in zip(named, places, strict=True)
                if place is not None and described[place]}
    contexts = measurement_contexts(samples, bytes_of)
    median_context = float(np.median(list(contexts.values()))) if contexts else 0.0
    measured_in = np.full(len(bytes_moved), median_context)
    for key_hash, place in zip(named, places, strict=True):
        if place is not None and key_hash in contexts:
            measured_in[place] = contexts[key_hash]
    factors = context.factors(sensitivity(np.nan_to_num(bytes_moved), np.nan_to_num(macs)), measured_in)
    factors[~described] = 1.0
    return np.asarray(factors, dtype=np.float64)


_BYTES_COLUMN = FEATURE_NAMES.index("bytes_moved")
_MACS_COLUMN = FEATURE_NAMES.index("macs")


def _fallback_features_many(keys: Sequence[KernelKey], cached: bool = True) -> list[tuple[float, float]]:
    """(bytes moved, MACs) of each key; rows of one matrix equal the rows computed one key at a time."""
    matrix = features_matrix(keys, cached=cached)
    return [(float(row[_BYTES_COLUMN]), float(row[_MACS_COLUMN])) for row in matrix]


def _fallback_features_array(keys: Sequence[KernelKey]) -> np.ndarray:
    """(bytes moved, MACs) of each key as an n x 2 array; no key enters the feature cache."""
    return features_matrix(keys, cached=False)[:, [_BYTES_COLUMN, _MACS_COLUMN]]


def _memory_bound(bytes_moved: Any, macs: Any) -> Any:
    """Whether kernels (numbers or arrays of them) do at most _MEMORY_BOUND_MACS_PER_BYTE MACs per byte they move."""
    return macs <= _MEMORY_BOUND_MACS_PER_BYTE * bytes_moved


def fit_bandwidth_fallback(rows: Sequence[tuple[KernelKey, float]]) -> tuple[float, float, float] | None:
    """latency = a + b x bytes + c x MACs, non-negative least squares over all of the device's kernels."""
    return _fit_bandwidth(_fallback_features_array([key for key, _ in rows]),
                          np.array([latency for _, latency in rows], dtype=np.float64))


def _fit_bandwidth(bytes_and_macs: np.ndarray, target: np.ndarray) -> tuple[float, float, float] | None:
    """`fit_bandwidth_fallback` of each kernel's (bytes moved, MACs) and measured latency."""
    if len(target) < 3:
        return None
    features = np.column_stack([np.ones(len(target)), bytes_and_macs])
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


_PENDING: _Value = (0.0, 0.0, 0.0, "")


def _value(latency: float, low: float, high: float, source: str) -> _Value:
    """A kernel's value as its estimate states it: latency at least 1 ns, the interval around it."""
    latency = max(latency, 1e-6)
    return latency, min(low, latency), max(high, latency), source
