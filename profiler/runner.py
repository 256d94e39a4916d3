"""Budgeted, resumable profiling runs: measure work items, write each one's kernels as soon as it is done.

Resumable by construction: every item's measurements are committed before the next item starts, the
run's report (items done, end-to-end samples) is updated with them, and a new run skips items and
kernel keys that any earlier run of the device already measured. Killing a run loses at most the
item in flight; re-running measures nothing twice.
"""
from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from predictor.compression.config import CompressionConfig, LayerCompression
from predictor.kernels.keys import KernelKey
from predictor.records import RunReport, Timing
from predictor.runtime.optimizer import describe_host
from predictor.store import MeasurementIn
from profiler.backends.base import (
    PROFILING_PROTOCOL,
    REFERENCE_KINDS,
    Backend,
    KernelTiming,
    MeasureProtocol,
    reference_model,
)
from profiler.backends.base import Timing as ModelTiming  # a model's timing; Timing above is a report's sample
from profiler.calibration import CALIBRATION_ITEM, CHAINS, measure_context_probes
from profiler.plan import WorkItem

__all__ = ["CALM", "SLOW", "SPELL", "ItemObserver", "ProfileRunner", "RunProgress", "Sink", "measure_reference_ms",
           "nearer_typical", "off_typical", "reference_model", "typical_time"]

logger = logging.getLogger(__name__)

_FLAT_MIN_PAIRS = 8
_FLAT_MEDIAN_DEVIATION = 0.15
_FLAT_CLEARLY_FASTER = 0.20
_DRIFT_THRESHOLD = 0.10
_MAX_COMPENSATION = 3.0
# Items of each reference kind whose paired reference runs set a device's baseline (see ProfileRunner.run).
_BASELINE_ITEMS = 3
_QUICK_REFERENCE = MeasureProtocol(warmup_runs=3, min_repeats=15, max_repeats=60, max_seconds=0.3)
_WEIGHT_OP_MARKERS = ("Conv", "Gemm", "MatMul")
# A slow (or fast) spell: an item's reference ran more than this share away from its kind's typical time in the
# run, the median of the last _TYPICAL_READINGS items' (once there are _MIN_TYPICAL_READINGS), and the quick fp32
# reference timed alone right after is more than CALM off its time at the start of the run. Its rows are not
# written scaled: a spell can slow a model more than the reference (efficientnet_b0 QDQ ran 1.68x slower while its
# reference ran 1.40x, and its rows kept +20% after scaling), so the item is measured again once the host is calm.
# The quick look tells a spell from the pairing's own effect: a reference paired with some models runs off its
# typical time whatever the host does (int8 references at 0.69x and 1.5x, the same again when measured again:
# docs/history/results/accuracy_real_d663330.json).
SPELL = 0.2
_TYPICAL_READINGS = 9
_MIN_TYPICAL_READINGS = 3
# Calm: the quick fp32 reference within CALM of its time at the start of the run; waited for in steps of
# _CALM_POLL_S for at most _CALM_WAIT_S before a spell's item is measured the second (and last) time.
CALM = 0.1
_CALM_POLL_S = 2.0
_CALM_WAIT_S = 30.0
# A slow phase: a spell that lasts minutes becomes the typical time, so SPELL does not see it, and the scaling does
# not undo it (efficientnet_b0 pruned 30% then QDQ: 40.1 ms with its int8 reference at 1.28x its baseline, 21.2 ms
# measured in a calm state). An item whose reference ran more than SLOW slower than its kind's median over the run
# so far, while the quick fp32 reference says the host is not calm, is held: its rows wait, it is measured again
# _RETRY_AFTER_S later (at the latest when the plan runs out), and the attempt whose reference ran nearer that median
# is kept; one still slow is measured again as long after that, at most _RETRIES times. A host slower throughout a
# run is no phase: its median moves with it (compensated, as before).
SLOW = 0.08
_RETRY_AFTER_S = 150.0
_RETRIES = 2


@dataclass(frozen=True)
class _Held:
    """An item measured in a slow phase (SLOW), waiting to be measured again: the rows of its attempt kept so far, its
    end-to-end entry's index in the report, each attempt's reference time and which one is kept, the median those
    times are judged against and when it is due."""

    item: WorkItem
    rows: list[MeasurementIn]
    index: int
    times: tuple[float, ...]
    kept: int
    median_ms: float
    due: float


@dataclass(frozen=True)
class _Attempt:
    """One measurement of an item: end to end, the reference's time during it and its kind, and per kernel."""

    wall: ModelTiming
    reference_ms: float
    kind: str
    timings: list[KernelTiming]


class Sink(Protocol):
    """Where measurements go: the store directly, or the REST service of a central latpred."""

    def known_table(self) -> dict[str, float]: ...

    def done_items(self) -> set[str]: ...

    def previous_references(self, kind: str = "fp32") -> list[float]: ...

    def start(self, run_id: str, budget_minutes: float | None, runtime: dict[str, Any] | None = None,
              host: str | None = None) -> None: ...

    def write(self, run_id: str, rows: list[MeasurementIn], report: dict[str, Any]) -> int: ...

    def finish(self, run_id: str, status: str, report: dict[str, Any]) -> None: ...


class ItemObserver(Protocol):
    """Sees each profiled item's measurements before the plan yields the next (adaptive refinement)."""

    def observe(self, item: WorkItem, rows: list[MeasurementIn]) -> None: ...

    def summary(self) -> dict[str, Any]: ...


@dataclass
class RunProgress:
    """A run's report while it is built: what the run did so far (coverage per op type, flat axes found, drift
    seen, end-to-end timings). `record()` is the report as stored (predictor.records.RunReport)."""

    run_id: str
    device: str
    items_done: list[str] = field(default_factory=list)
    items_skipped: int = 0
    items_failed: list[str] = field(default_factory=list)
    measured_per_op: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    flat_axes: dict[str, list[str]] = field(default_factory=dict)
    flat_evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)
    reference_ms: float | None = None  # the fp32 reference's, as references["fp32"]
    baseline_reference_ms: float | None = None  # as baseline_references["fp32"]
    references: dict[str, float] = field(default_factory=dict)  # each reference kind's time at the start
    baseline_references: dict[str, float] = field(default_factory=dict)  # each kind's in the baseline state
    end_to_end: list[Timing] = field(default_factory=list)
    elapsed_s: float = 0.0
    budget_minutes: float | None = None
    stopped_by: str = ""
    clock: str = "wall"  # what runs were timed with: "thread_cpu" (one thread) or "wall"
    paired: bool = False  # runs timed in pairs with the reference kernel, and scaled by it
    refinement: dict[str, Any] | None = None  # what the observer (adaptive refinement) did
    context_probes: list[dict[str, Any]] = field(default_factory=list)  # profiler.calibration's rows
    # The per-node profiler's costs the backend calibrated (onnxruntime: overhead_us, event_us), taken off
    # before a model's time is split between its kernels.
    profiler_costs_us: dict[str, float] | None = None
    # Items measured again: label, reference kind, each attempt's reference ratio and the one kept; "against":
    # "typical" (absent in older reports) after a spell (SPELL), "run median" after a slow phase (SLOW).
    remeasured: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> RunReport:
        """The report as stored and read back (predictor.records.RunReport)."""
        return RunReport(
            run_id=self.run_id, device=self.device, items_done=tuple(self.items_done),
            items_skipped=self.items_skipped, items_failed=tuple(self.items_failed),
            measured_per_op=dict(self.measured_per_op),
            flat_axes={op: list(axes) for op, axes in self.flat_axes.items()},
            flat_evidence={op: dict(values) for op, values in self.flat_evidence.items()},
            drift=tuple(dict(entry) for entry in self.drift), reference_ms=self.reference_ms,
            baseline_reference_ms=self.baseline_reference_ms, references=dict(self.references),
            baseline_references=dict(self.baseline_references), end_to_end=tuple(self.end_to_end),
            elapsed_s=self.elapsed_s, budget_minutes=self.budget_minutes, stopped_by=self.stopped_by,
            clock=self.clock, paired=self.paired, refinement=self.refinement,
            context_probes=tuple(dict(row) for row in self.context_probes), profiler_costs_us=self.profiler_costs_us,
            remeasured=tuple(dict(entry) for entry in self.remeasured),
        )

    def to_dict(self) -> dict[str, Any]:
        return self.record().to_dict()

    def summary_lines(self) -> list[str]:
        """Human-readable report lines (what the CLI prints)."""
        lines = [f"run {self.run_id} on {self.device}: {len(self.items_done)} models profiled, "
                 f"{sum(self.measured_per_op.values())} new kernels in {self.elapsed_s / 60:.1f} min "
                 f"({self.stopped_by or 'done'})",
                 f"  runs timed by {'the thread CPU time' if self.clock == 'thread_cpu' else 'wall time'}"
                 + (", in pairs with the reference kernel" if self.paired else "")]
        for op_type, count in sorted(self.measured_per_op.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {op_type:28s} {count:6d} kernels")
        for op_type, axes in sorted(self.flat_axes.items()):
            for axis in axes:
                evidence = self.flat_evidence.get(op_type, {})
                lines.append(f"  {axis} has no effect on {op_type} on device {self.device} "
                             f"(median change {evidence.get('median_change', 0) * 100:+.1f}% "
                             f"over {int(evidence.get('pairs', 0))} pairs)")
        if self.drift:
            worst = max(self.drift, key=lambda d: abs(d["ratio"] - 1))
            baseline = self.baseline_references.get(worst.get("reference", "fp32"), self.baseline_reference_ms or 0)
            lines.append(f"  DRIFT: {worst.get('reference', 'fp32')} reference kernel changed by up to "
                         f"{(worst['ratio'] - 1) * 100:+.1f}% "
                         f"(at {worst['elapsed_s']:.0f}s; {len(self.drift)} of {len(self.end_to_end)} models); "
                         + (f"measurements compensated to the baseline {baseline:.3f} ms"
                            if self.paired or self.clock != "thread_cpu"
                            else "runs timed by thread CPU time, not scaled"))
        else:
            lines.append("  no drift: reference kernel stayed within "
                         f"{_DRIFT_THRESHOLD * 100:.0f}% of {self.reference_ms or 0:.3f} ms")
        spells = [entry["label"] for entry in self.remeasured if entry.get("against", "typical") == "typical"]
        phases = [entry["label"] for entry in self.remeasured if entry.get("against") == "run median"]
        if spells:
            lines.append(f"  {len(spells)} model{'s' if len(spells) != 1 else ''} measured again after a spell of "
                         f"the host (reference more than {SPELL * 100:.0f}% off its typical time): {', '.join(spells)}")
        if phases:
            lines.append(f"  {len(phases)} model{'s' if len(phases) != 1 else ''} measured again minutes later, after "
                         f"a slow phase of the host (reference more than {SLOW * 100:.0f}% slower than its median "
                         f"over the run): {', '.join(phases)}")
        if self.items_failed:
            lines.append(f"  {len(self.items_failed)} models failed to build or run (see log)")
        if self.refinement is not None:
            lines.append(_refinement_line(self.refinement))
        if self.context_probes:
            lines.append(_calibration_line(self.context_probes))
        if self.profiler_costs_us and "event_us" in self.profiler_costs_us:
            lines.append(f"  per-node profiler events: {self.profiler_costs_us['event_us']:.2f} us each taken off "
                         "before a model's time was split between its kernels")
        return lines


def _calibration_line(rows: list[dict[str, Any]]) -> str:
    """The report line of the context calibration: each probe's slowdown from its smallest to largest context."""
    parts = []
    for probe in dict.fromkeys(row["probe"] for row in rows):
        own = [row for row in rows if row["probe"] == probe]
        small, large = min(row["chain"] for row in own), max(row["chain"] for row in own)
        at_small = float(np.median([row["ratio"] for row in own if row["chain"] == small]))
        at_large = float(np.median([row["ratio"] for row in own if row["chain"] == large]))
        traffic = {row["chain"]: row["traffic_bytes"] for row in own}
        parts.append(f"{probe} x{at_large / at_small:.2f} at {traffic[large] / 1e6:.0f} MB per run against "
                     f"{traffic[small] / 1e6:.0f} MB")
    return "  context calibration: " + "; ".join(parts)


def _refinement_line(refinement: dict[str, Any]) -> str:
    """The report line of adaptive refinement (profiler.refine.AdaptiveRefinement.summary)."""
    fits = refinement.get("fits")
    if not fits:
        return (f"  adaptive refinement: not started ({refinement.get('models_seen', 0)} models seen, needs "
                f"{refinement.get('models_before_first_fit', 0)}); "
                f"{refinement.get('explored_items', 0)} random variants")
    worst = ", ".join(f"{op} {mape * 100:.0f}%" for op, mape in fits["worst_op_types"])
    return (f"  adaptive refinement: {refinement.get('refined_items', 0)} models near the worst-predicted, "
            f"{refinement.get('explored_items', 0)} random; out-of-fold kernel MAPE at the last fit "
            f"({fits['items']} models): {worst}")


def typical_time(readings: list[float]) -> float | None:
    """A reference's typical time: the median of its last _TYPICAL_READINGS times (None before
    _MIN_TYPICAL_READINGS), the time a spell is judged against (SPELL)."""
    recent = readings[-_TYPICAL_READINGS:]
    return float(np.median(recent)) if len(recent) >= _MIN_TYPICAL_READINGS else None


def off_typical(reference_ms: float, typical: float) -> bool:
    """Whether a reference time is more than SPELL off its typical time (callers first need one: typical_time)."""
    return abs(reference_ms / typical - 1.0) > SPELL


def nearer_typical(first_ms: float, second_ms: float, typical: float) -> int:
    """0 or 1: which of two reference times is nearer the typical time (by ratio; the first on a tie)."""
    return 0 if abs(np.log(first_ms / typical)) <= abs(np.log(second_ms / typical)) else 1


def measure_reference_ms(backend: Backend) -> float:
    """The reference kernel's time on this host now (a quick measurement, about a tenth of a second)."""
    return backend.measure_model(reference_model(), _QUICK_REFERENCE, paired=False).median_ms


def _has_sparsity(item: WorkItem) -> bool:
    config = item.config
    specs = [config.default, *config.layers.values()]
    return any((spec.sparsity or 0) > 0 or spec.sparsity_pattern == "2:4" for spec in specs)


def _without_sparsity(config: CompressionConfig) -> CompressionConfig:
    def strip(spec: LayerCompression) -> LayerCompression:
        return spec.model_copy(update={"sparsity": None, "sparsity_pattern": None})

    return CompressionConfig(default=strip(config.default),
                             layers={name: strip(spec) for name, spec in config.layers.items()})


def _rows_from_timings(timings: list[KernelTiming]) -> list[MeasurementIn]:
    """One row per distinct key; repeated kernels of a model pool their samples (median of medians)."""
    by_hash: dict[str, list[KernelTiming]] = defaultdict(list)
    for timing in timings:
        by_hash[timing.kernel.key.key_hash].append(timing)
    rows = []
    for key_hash, group in by_hash.items():
        key = group[0].kernel.key
        median = float(np.median([t.timing.median_ms for t in group]))
        p10 = min(float(np.median([t.timing.p10_ms for t in group])), median)
        p90 = max(float(np.median([t.timing.p90_ms for t in group])), median)
        rows.append(MeasurementIn(key=key.to_dict(), key_hash=key_hash, op_type=key.op_type, bits=key.bits,
                                  median_ms=median, p10_ms=p10, p90_ms=p90,
                                  repeats=sum(t.timing.repeats for t in group)))
    return rows


class ProfileRunner:
    """Runs work items against a backend within a time budget, writing to a sink as it goes."""

    def __init__(
        self,
        device: str,
        backend: Backend,
        sink: Sink,
        protocol: MeasureProtocol | None = None,
        progress: Callable[[int, float, float, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        observer: ItemObserver | None = None,
        calibrate_context: bool = False,
        calibration_chains: tuple[int, ...] = CHAINS,
    ) -> None:
        self.device = device
        self.backend = backend
        self.sink = sink
        self.protocol = protocol or PROFILING_PROTOCOL
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.observer = observer
        # Measure the context effect once per device (profiler.calibration) before the first item.
        self.calibrate_context = calibrate_context
        self.calibration_chains = calibration_chains

    def run(self, items: Iterable[WorkItem], budget_minutes: float, run_id: str | None = None) -> RunProgress:
        run_id = run_id or uuid.uuid4().hex
        report = RunProgress(run_id=run_id, device=self.device, budget_minutes=budget_minutes,
                           clock=getattr(self.backend, "clock_name", "wall"))
        start = self._started = self.clock()
        deadline = self._deadline = start + budget_minutes * 60.0
        # Each reference kind's times as the run's items saw them, for telling a spell (see SPELL).
        self._readings: dict[str, list[float]] = defaultdict(list)
        table = self.sink.known_table()
        known = set(table)
        done_before = self.sink.done_items()
        self.sink.start(run_id, budget_minutes, runtime=self.backend.runtime().to_dict(), host=describe_host())
        sparsity_pairs: dict[str, list[float]] = defaultdict(list)
        # Every measurement is scaled to the device's baseline state: the reference kernel's time when the
        # device's first run started, the same for every later run, so all runs' rows share one scale and a
        # shared host that slows down by half for a minute cannot write a slow minute into the table. A
        # backend that pairs runs has one reference per kind (backends.base.REFERENCE_KINDS), each with its
        # baseline: the first run that timed it (a device profiled before the int8 reference gets its int8
        # baseline from its next run).
        # A device's first run takes its baseline as its items see the reference: the median of the paired reference
        # runs of its first _BASELINE_ITEMS items of each kind (their rows wait for it), not the reference timed on
        # its own at the start, which a busy start or the reference's own caches make another state (an int8
        # reference timed at 2.12 ms alone ran at 1.5-1.7 ms beside the models, and every int8 row came out 30-45%
        # slow).
        pending: dict[str, list[tuple[str, list[MeasurementIn], int, float]]] = {}
        for kind in REFERENCE_KINDS if getattr(self.backend, "paired", False) else REFERENCE_KINDS[:1]:
            self._reference_ms(kind=kind)  # the first runs of a fresh process are slow: warm up first
            report.references[kind] = self._reference_ms(kind=kind)
            previous = self.sink.previous_references(kind)
            report.baseline_references[kind] = previous[0] if previous else report.references[kind]
            if not previous and getattr(self.backend, "paired", False):
                pending[kind] = []
        report.reference_ms = report.references["fp32"]
        report.baseline_reference_ms = report.baseline_references["fp32"]
        status = "finished"
        held: list[_Held] = []
        try:
            if self.calibrate_context and CALIBRATION_ITEM not in done_before:
                self._calibrate(report, run_id, budget_minutes)
            for item in items:
                self._retry_held(run_id, report, held, known, due_by=self.clock())
                now = self.clock()
                report.elapsed_s = now - start
                if now >= deadline:
                    report.stopped_by = "budget"
                    break
                if self.progress:
                    self.progress(len(report.items_done), now - start, budget_minutes * 60.0, item.label)
                if item.item_id in done_before:
                    report.items_skipped += 1
                    continue
                if item.is_sparsity and self._sparsity_settled(report):
                    report.items_skipped += 1
                    continue
                rows = self._profile_item(item, report, known)
                if rows is None:
                    continue
                for row in rows:
                    table[row.key_hash] = row.median_ms
                if _has_sparsity(item):
                    # The dense twin is measured right after, so both see the same machine state:
                    # a comparison with a table entry from minutes ago would compare load, not sparsity.
                    dense_item = replace(item, config=_without_sparsity(item.config), label=item.label + "~dense")
                    dense_rows = self._profile_item(dense_item, report, known, record=False) or []
                    dense_table = {row.key_hash: row.median_ms for row in dense_rows}
                    self._collect_sparsity_pairs(rows, dense_table, sparsity_pairs)
                    self._update_flat_axes(report, sparsity_pairs)
                if self.observer is not None:
                    self.observer.observe(item, rows)
                    report.refinement = self.observer.summary()
                report.elapsed_s = self.clock() - start
                entry = report.end_to_end[-1]
                waiting = pending.get(entry.reference)
                if waiting is not None and entry.reference_ms:
                    # Done once its rows are written: a report saved meanwhile (another kind's baseline settling)
                    # must not list it, or a run killed before its rows are written would never measure them.
                    new_rows = self._new_rows(report, rows, known)
                    waiting.append((item.item_id, new_rows, len(report.end_to_end) - 1, entry.reference_ms))
                    if len(waiting) >= _BASELINE_ITEMS:
                        self._settle_baseline(run_id, report, entry.reference, pending)
                    continue
                median = self._slow_phase_median(report, entry)
                if median is not None:
                    # Not done until written: a run killed meanwhile measures it again next time.
                    logger.info("%s measured in a slow phase (%s reference at %.0f%% of its median over the run): "
                                "measuring it again later", item.label, entry.reference,
                                (entry.reference_ms or median) / median * 100)
                    held.append(_Held(item=item, rows=rows, index=len(report.end_to_end) - 1,
                                      times=(entry.reference_ms or median,), kept=0, median_ms=median,
                                      due=self.clock() + _RETRY_AFTER_S))
                    continue
                self._write_item(run_id, report, item.item_id, rows, known)
            else:
                report.stopped_by = "space exhausted"
                while held and self.clock() < deadline:
                    self._retry_held(run_id, report, held, known, due_by=float("inf"))
        except KeyboardInterrupt:
            status = "killed"
            report.stopped_by = "interrupted"
            raise
        finally:
            report.elapsed_s = self.clock() - start
            if status == "finished":
                for kind in [kind for kind, waiting in pending.items() if waiting]:
                    self._settle_baseline(run_id, report, kind, pending)
                for waiting_item in held:  # the budget ran out before their second measurement
                    self._write_item(run_id, report, waiting_item.item.item_id, waiting_item.rows, known)
            self.sink.finish(run_id, status, report.to_dict())
        return report

    @staticmethod
    def _new_rows(report: RunProgress, rows: list[MeasurementIn], known: set[str]) -> list[MeasurementIn]:
        """The rows whose keys the table lacks, now counted as known (and in the report's kernels per op type)."""
        new_rows = [row for row in rows if row.key_hash not in known]
        for row in new_rows:
            report.measured_per_op[row.op_type] += 1
        known.update(row.key_hash for row in new_rows)
        return new_rows

    def _write_item(self, run_id: str, report: RunProgress, item_id: str, rows: list[MeasurementIn],
                    known: set[str]) -> None:
        """Write an item's rows the table lacks, with the report that now lists it as done."""
        new_rows = self._new_rows(report, rows, known)
        report.items_done.append(item_id)
        self.sink.write(run_id, new_rows, report.to_dict())

    def _slow_phase_median(self, report: RunProgress, entry: Timing) -> float | None:
        """The median of the entry's reference kind over the run so far, where the entry was measured in a slow phase
        (SLOW); None where it was not."""
        readings = self._readings[entry.reference]
        if not entry.reference_ms or len(readings) <= _MIN_TYPICAL_READINGS:
            return None
        median = float(np.median(readings))
        return median if self._slow(report, entry.reference_ms, median) else None

    def _slow(self, report: RunProgress, reference_ms: float, median_ms: float) -> bool:
        """Whether a reference time is more than SLOW slower than its median on a host that is not calm now."""
        return reference_ms / median_ms - 1.0 > SLOW and not self._host_calm(report)

    def _retry_held(self, run_id: str, report: RunProgress, held: list[_Held], known: set[str],
                    due_by: float) -> None:
        """Measure again each held item due by `due_by` (while the budget lasts) and keep the attempt whose reference
        ran nearer its median over the run; write it, or hold it again while it is still slow and has retries left.
        A measurement that fails leaves the attempt kept before."""
        for waiting in [waiting for waiting in held if waiting.due <= due_by]:
            if self.clock() >= self._deadline:
                return
            held.remove(waiting)
            rows, times, kept = waiting.rows, list(waiting.times), waiting.kept
            again = self._profile_item(waiting.item, report, known, measured_before=True)
            if again is not None:
                latest = report.end_to_end.pop()
                times.append(latest.reference_ms or waiting.median_ms)
                if nearer_typical(times[kept], times[-1], waiting.median_ms) == 1:
                    kept, rows = len(times) - 1, again
                    report.end_to_end[waiting.index] = latest
                if len(times) <= _RETRIES and self._slow(report, times[kept], waiting.median_ms):
                    held.append(replace(waiting, rows=rows, times=tuple(times), kept=kept,
                                        due=self.clock() + _RETRY_AFTER_S))
                    continue
            ratios = [round(time_ms / waiting.median_ms, 4) for time_ms in times]
            report.remeasured.append({"label": waiting.item.label, "kept": kept, "ratios": ratios,
                                      "reference": report.end_to_end[waiting.index].reference, "against": "run median"})
            self._write_item(run_id, report, waiting.item.item_id, rows, known)

    def _settle_baseline(self, run_id: str, report: RunProgress, kind: str,
                         pending: dict[str, list[tuple[str, list[MeasurementIn], int, float]]]) -> None:
        """Fix the device's baseline for `kind` from the items that waited for it, scale and write their rows."""
        waiting = pending.pop(kind)
        provisional = report.baseline_references[kind]
        baseline = float(np.median([reference for _, _, _, reference in waiting]))
        factor = baseline / provisional
        report.baseline_references[kind] = baseline
        if kind == "fp32":
            report.baseline_reference_ms = baseline
        logger.info("baseline of the %s reference: %.3f ms as the first %d items saw it (%.3f ms timed alone)",
                    kind, baseline, len(waiting), provisional)
        for item_id, rows, index, _ in waiting:
            report.items_done.append(item_id)
            entry = report.end_to_end[index]
            report.end_to_end[index] = replace(
                entry, measured_ms=None if entry.measured_ms is None else entry.measured_ms * factor,
                compensation=round(entry.compensation * factor, 4))
            scaled = [replace(row, median_ms=row.median_ms * factor, p10_ms=row.p10_ms * factor,
                              p90_ms=row.p90_ms * factor) for row in rows]
            self.sink.write(run_id, scaled, report.to_dict())

    def _calibrate(self, report: RunProgress, run_id: str, budget_minutes: float) -> None:
        """The context calibration (profiler.calibration), recorded in the report as done once it completed."""
        def progress(done: int, total: int) -> None:
            if self.progress:
                self.progress(len(report.items_done), self.clock() - self._started, budget_minutes * 60.0,
                              f"context calibration {done}/{total}")

        try:
            report.context_probes = measure_context_probes(self.backend, self.protocol,
                                                           chains=self.calibration_chains, progress=progress)
        except Exception as exc:  # noqa: BLE001 - a runtime that cannot build a probe must not end the run
            logger.warning("context calibration skipped: %s", " ".join(str(exc).split())[:300])
            return
        report.items_done.append(CALIBRATION_ITEM)
        report.elapsed_s = self.clock() - self._started
        self.sink.write(run_id, [], report.to_dict())

    def _profile_item(self, item: WorkItem, report: RunProgress, known: set[str],
                      record: bool = True, measured_before: bool = False) -> list[MeasurementIn] | None:
        """The item's rows, scaled to the device's baseline; an item measured in a spell is measured again once the
        host is calm (at most once), and the attempt whose reference ran nearer its typical time is kept.
        `measured_before`: a failure leaves the item's earlier measurement (see _measure_item)."""
        attempt = self._measure_item(item, report, again=measured_before)
        if attempt is None:
            return None
        typical = typical_time(self._readings[attempt.kind])
        if typical is not None and off_typical(attempt.reference_ms, typical) and not self._host_calm(report):
            logger.info("%s measured in a spell (%s reference at %.0f%% of its typical time): measuring it again",
                        item.label, attempt.kind, attempt.reference_ms / typical * 100)
            self._wait_for_calm(report)
            again = self._measure_item(item, report, again=True)
            attempts = [attempt] if again is None else [attempt, again]
            kept = nearer_typical(attempt.reference_ms, again.reference_ms, typical) if again is not None else 0
            report.remeasured.append({"label": item.label, "reference": attempt.kind, "kept": kept,
                                      "ratios": [round(a.reference_ms / typical, 4) for a in attempts]})
            attempt = attempts[kept]
        wall, reference_now, kind, timings = attempt.wall, attempt.reference_ms, attempt.kind, attempt.timings
        self._readings[kind].append(reference_now)
        factor = self._compensation(report, reference_now, kind)
        rows = [replace(row, median_ms=row.median_ms * factor, p10_ms=row.p10_ms * factor,
                        p90_ms=row.p90_ms * factor) for row in _rows_from_timings(timings)]
        if not record:
            return rows
        report.end_to_end.append(Timing(
            label=item.label,
            measured_ms=wall.median_ms * factor,
            compensation=round(factor, 4),
            reference=kind,
            reference_ms=round(reference_now, 5),
            kernel_hashes=tuple(t.kernel.key.key_hash for t in timings),
        ))
        return rows

    def _measure_item(self, item: WorkItem, report: RunProgress, again: bool = False) -> _Attempt | None:
        """The item measured once; None if it failed to build or run (recorded as failed, unless measured `again`:
        then its first measurement stands)."""
        try:
            model = item.model()
            wall = self.backend.measure_model(model, self.protocol)
            # Paired timing says how fast the host was during the runs themselves; else a quick look now.
            reference_now = wall.reference_ms or self._reference_ms(quick=True)
            kind = wall.reference_kind  # "fp32" where unpaired: the quick timing is the fp32 reference's
            report.paired = wall.reference_ms is not None
            timings = self.backend.measure_kernels(model, self.protocol, wall=wall)
            if report.profiler_costs_us is None:
                report.profiler_costs_us = getattr(self.backend, "profiler_calibration", None)
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors share no base; one model must not end the run
            logger.warning("%s %s: %s", "keeping the first measurement of" if again else "skipping", item.label,
                           " ".join(str(exc).split())[:300])
            if not again:
                report.items_failed.append(item.label)
            return None
        return _Attempt(wall=wall, reference_ms=reference_now, kind=kind, timings=timings)

    def _host_calm(self, report: RunProgress) -> bool:
        """Whether the quick fp32 reference, timed alone now, runs within CALM of its time at the start of the run."""
        return abs(self._reference_ms(quick=True) / report.references["fp32"] - 1.0) <= CALM

    def _wait_for_calm(self, report: RunProgress) -> None:
        """Wait (at most _CALM_WAIT_S, not past the budget) until the quick fp32 reference runs near its start time."""
        waited = 0.0
        while waited < _CALM_WAIT_S and self.clock() < self._deadline:
            if self._host_calm(report):
                return
            self.sleep(_CALM_POLL_S)
            waited += _CALM_POLL_S

    def _compensation(self, report: RunProgress, reference_now: float, kind: str = "fp32") -> float:
        """Factor from the machine's state now to the device's baseline state (drift is recorded).

        `reference_now`: the `kind` reference's time now (backends.base.REFERENCE_KINDS).

        Paired runs are scaled by their reference runs. Unpaired runs are scaled by a quick reference timing
        when timed by wall time (a busy host's load would go into the table); unpaired runs timed by thread CPU
        time are not: scaling them by the quick timing's own noise made them worse (validation MAPE 7.0% raw
        vs 9.9% scaled on an idle host), and drift is only reported.
        """
        start, baseline = report.references.get(kind), report.baseline_references.get(kind)
        assert start is not None and baseline is not None, f"no {kind} reference timed at the start"
        ratio = reference_now / start
        scaled = report.paired or report.clock != "thread_cpu"
        if abs(ratio - 1.0) > _DRIFT_THRESHOLD:
            logger.info("drift: reference kernel at %.0f%% of its start time%s", ratio * 100,
                        " (compensated)" if scaled else "")
            report.drift.append({"elapsed_s": round(self.clock() - self._started, 1), "ratio": round(ratio, 4),
                                 "reference": kind})
        if not scaled:
            return 1.0
        return min(_MAX_COMPENSATION, max(1 / _MAX_COMPENSATION, baseline / reference_now))

    def _reference_ms(self, quick: bool = False, kind: str = "fp32") -> float:
        if quick:
            return measure_reference_ms(self.backend)
        protocol = replace(self.protocol, min_repeats=max(self.protocol.min_repeats, 20))
        # The reference itself is not timed in pairs with the reference.
        return self.backend.measure_model(reference_model(kind), protocol, paired=False).median_ms

    @staticmethod
    def _collect_sparsity_pairs(rows: list[MeasurementIn], table: dict[str, float],
                                pairs: dict[str, list[float]]) -> None:
        for row in rows:
            key = KernelKey.from_dict(row.key)
            if key.sparsity == 0.0:
                continue
            dense_hash = replace(key, sparsity=0.0, sparsity_pattern="dense").key_hash
            if dense_hash in table and table[dense_hash] > 0:
                pairs[key.op_type].append(row.median_ms / table[dense_hash])

    @staticmethod
    def _update_flat_axes(report: RunProgress, pairs: dict[str, list[float]]) -> None:
        for op_type, ratios in pairs.items():
            if len(ratios) < _FLAT_MIN_PAIRS:
                continue
            # Noise moves single pairs both ways; an effect of sparsity moves them one way. So the
            # axis is flat when the median pair changes by little and most pairs are not faster.
            ratios_array = np.array(ratios)
            median_change = float(np.median(ratios_array) - 1.0)
            faster_share = float(np.mean(ratios_array < 1.0 - _FLAT_CLEARLY_FASTER))
            flat = abs(median_change) < _FLAT_MEDIAN_DEVIATION and faster_share < 0.5
            report.flat_evidence[op_type] = {"pairs": float(len(ratios)), "median_change": median_change}
            axes = set(report.flat_axes.get(op_type, []))
            if flat:
                axes.add("sparsity")
            else:
                axes.discard("sparsity")
            if axes:
                report.flat_axes[op_type] = sorted(axes)
            else:
                report.flat_axes.pop(op_type, None)

    @staticmethod
    def _sparsity_settled(report: RunProgress) -> bool:
        """True once every weight op type seen in sparse models proved flat: more samples buy nothing."""
        seen = [op for op in report.flat_evidence if any(m in op for m in _WEIGHT_OP_MARKERS)]
        return bool(seen) and all("sparsity" in report.flat_axes.get(op, []) for op in seen) and \
            sum(report.flat_evidence[op]["pairs"] for op in seen) >= 3 * _FLAT_MIN_PAIRS

