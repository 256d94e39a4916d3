"""Runs are timed by the calling thread's CPU time with one thread, by wall time with more."""
from __future__ import annotations

import time
from dataclasses import replace

import onnx
import pytest
from sqlalchemy import Engine

from predictor.estimation.estimate import DevicePredictor
from predictor.runtime.optimizer import describe_host
from predictor.store import get_device, register_device, session_factory, session_scope
from profiler.backends.base import MeasureProtocol, Timing
from profiler.backends.onnxruntime import OnnxRuntimeBackend, _Pairing
from profiler.plan import model_plan
from profiler.runner import ProfileRunner, reference_model
from profiler.sinks import StoreSink
from tests import factories

_FIVE_RUNS = MeasureProtocol(warmup_runs=0, min_repeats=5, max_repeats=5, max_seconds=10.0)


class _SleepingSession:
    """A session whose every run waits 20 ms without using the CPU (as if the OS ran someone else)."""

    def run(self, outputs: object, feeds: object) -> None:
        time.sleep(0.02)


def test_one_thread_leaves_out_time_the_thread_did_not_run() -> None:
    backend = OnnxRuntimeBackend(threads=1)
    assert backend.clock_name == "thread_cpu"
    samples, references = backend._run_until_stable(_SleepingSession(), {}, _FIVE_RUNS)
    assert len(samples) == 5 and references == []
    assert max(samples) < 5.0, samples


def test_several_threads_use_wall_time() -> None:
    backend = OnnxRuntimeBackend(threads=2)
    assert backend.clock_name == "wall"
    samples, _ = backend._run_until_stable(_SleepingSession(), {}, _FIVE_RUNS)
    assert min(samples) >= 20.0, samples


@pytest.mark.parametrize("threads", [1, 2])
def test_real_model_is_timed_with_either_clock(threads: int) -> None:
    timing = OnnxRuntimeBackend(threads=threads).measure_model(factories.conv_bn_relu_model(), _FIVE_RUNS)
    assert timing.repeats == 5
    assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms


class _DriftingBackend(OnnxRuntimeBackend):
    """The real backend, except that the reference kernel reads 1 ms until the first item, then 2 ms.

    Paired, every model's runs report the reference at 2 ms; unpaired, a quick reference timing reads 2 ms.
    """

    def __init__(self, threads: int, paired: bool) -> None:
        super().__init__(threads=threads, paired=paired)
        self.reference_calls = 0

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        if model.graph.name == reference_model().graph.name:
            self.reference_calls += 1
            value = 1.0 if self.reference_calls <= 2 else 2.0  # warm-up and baseline, then every item
            return Timing(median_ms=value, p10_ms=value, p90_ms=value, repeats=10)
        timing = super().measure_model(model, protocol, paired=False)
        return replace(timing, reference_ms=2.0) if (self.paired if paired is None else paired) else timing


@pytest.mark.parametrize(("threads", "paired", "expected_factor", "expected_baseline"),
                         [(1, False, 1.0, None), (2, False, 0.5, 1.0), (1, True, 1.0, 2.0), (2, True, 1.0, 2.0)])
def test_drift_is_reported_and_paired_or_wall_time_runs_are_scaled(
        store_engine: Engine, threads: int, paired: bool, expected_factor: float,
        expected_baseline: float | None) -> None:
    """Unpaired wall-time runs are scaled to the reference timed at the start; a device's first paired run takes its
    baseline as its items see the reference (here 2 ms, where it read 1 ms on its own at the start)."""
    runtime = OnnxRuntimeBackend(threads=threads).runtime()
    with session_scope(session_factory(store_engine)) as session:
        register_device(session, name="drift", backend=runtime.backend, execution_provider=runtime.execution_provider,
                      runtime_version=runtime.runtime_version, threads=threads, host=describe_host())
    items = model_plan(factories.conv_bn_relu_model(), "block", [])
    sink = StoreSink(session_factory(store_engine), "drift")
    report = ProfileRunner("drift", _DriftingBackend(threads, paired), sink, _FIVE_RUNS).run(items, budget_minutes=5)
    assert report.clock == ("thread_cpu" if threads == 1 else "wall")
    assert report.paired == paired
    assert report.drift and report.drift[0]["ratio"] == pytest.approx(2.0)
    assert [e.compensation for e in report.end_to_end] == [pytest.approx(expected_factor)]
    assert "DRIFT" in "\n".join(report.summary_lines())
    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "drift"))
    # Validation scales measurements only against a table that was scaled, to the table's baseline.
    assert predictor.reference_ms == (None if expected_baseline is None else pytest.approx(expected_baseline))


class _SteppingBackend(OnnxRuntimeBackend):
    """The real backend, except that items' paired reference runs read 2, 2, 3 ms, then 4 ms (it read 1 ms alone)."""

    def __init__(self) -> None:
        super().__init__(threads=1, paired=True)
        self.items = 0

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        if model.graph.name == reference_model().graph.name:
            return Timing(median_ms=1.0, p10_ms=1.0, p90_ms=1.0, repeats=10)
        timing = super().measure_model(model, protocol, paired=False)
        if paired is False:
            return timing
        self.items += 1
        return replace(timing, reference_ms=[2.0, 2.0, 3.0, 4.0][min(self.items, 4) - 1])


def test_a_first_run_takes_its_baseline_from_its_first_items(store_engine: Engine) -> None:
    runtime = OnnxRuntimeBackend(threads=1).runtime()
    with session_scope(session_factory(store_engine)) as session:
        register_device(session, name="steps", backend=runtime.backend,
                        execution_provider=runtime.execution_provider, runtime_version=runtime.runtime_version,
                        threads=1, host=describe_host())
    items = [replace(item, label=f"{item.label}-{i}") for i, item in
             enumerate(model_plan(factories.conv_bn_relu_model(), "block", []) * 4)]
    sink = StoreSink(session_factory(store_engine), "steps")
    report = ProfileRunner("steps", _SteppingBackend(), sink, _FIVE_RUNS).run(items, budget_minutes=5)
    # Baseline: the median of the first three items' references (2, 2, 3 ms); the fourth (4 ms) is scaled to it.
    assert report.baseline_references["fp32"] == pytest.approx(2.0)
    expected = [pytest.approx(factor, abs=1e-4) for factor in (1.0, 1.0, 2 / 3, 0.5)]
    assert [e.compensation for e in report.end_to_end] == expected
    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "steps"))
    assert predictor.reference_ms == pytest.approx(2.0)
    assert predictor.measurement_count > 0  # the items that waited for the baseline were written


class _SlowingHost:
    """A fake clock and sessions on it: each run takes its base time, twice that after `switch_after` runs.

    With `cold_ms`, a reference run right after a model run takes that long instead (the model left the caches
    cold for it).
    """

    def __init__(self, switch_after: int, cold_ms: float | None = None) -> None:
        self.now = 0.0
        self.runs = 0
        self.switch_after = switch_after
        self.cold_ms = cold_ms
        self.last_was_model = False

    def session(self, ms: float, reference: bool = False) -> object:
        host = self

        class _Session:
            def run(self, outputs: object, feeds: object) -> None:
                host.runs += 1
                run_ms = host.cold_ms if reference and host.last_was_model and host.cold_ms else ms
                host.now += run_ms * (2 if host.runs > host.switch_after else 1) / 1000.0
                host.last_was_model = not reference

        return _Session()

    def run_paired(self, run_ms: float, repeats: int) -> tuple[list[float], list[float]]:
        """The backend's paired runs of a session of `run_ms` against a 2 ms reference, on this host's clock."""
        backend = OnnxRuntimeBackend(threads=1)
        backend._clock = lambda: self.now
        pairing = _Pairing(self.session(2.0, reference=True), {}, last_ms=2.0)
        protocol = MeasureProtocol(warmup_runs=0, min_repeats=repeats, max_repeats=repeats, max_seconds=10.0)
        return backend._run_until_stable(self.session(run_ms), {}, protocol, pairing)


def test_paired_runs_see_a_slowdown_that_hits_the_reference_kernel_too() -> None:
    """Runs in pairs: the ratio to the reference run stays put when the whole host slows down mid-measurement."""
    samples, references = _SlowingHost(switch_after=12).run_paired(run_ms=4.0, repeats=12)
    # Blocks of one run (4 ms >= the 2 ms reference), so runs and reference runs alternate: 6 of each are
    # fast, then the host slows down for both.
    assert samples == pytest.approx([4.0] * 6 + [8.0] * 6)
    assert references == pytest.approx([2.0] * 6 + [4.0] * 6)


def test_paired_blocks_of_short_runs_last_one_reference_run() -> None:
    host = _SlowingHost(switch_after=1000)
    samples, references = host.run_paired(run_ms=0.5, repeats=10)
    assert len(samples) == len(references) == 10
    assert host.runs == 10 + 3  # blocks of 4 runs (2 ms), and one reference run for the last 2 runs


def test_runs_are_paired_with_the_cold_reference_run_right_after_them() -> None:
    """The reference's first run after a model is slow from the caches the model left; it is the pair."""
    samples, references = _SlowingHost(switch_after=1000, cold_ms=3.0).run_paired(run_ms=5.0, repeats=6)
    assert samples == pytest.approx([5.0] * 6)
    assert references == pytest.approx([3.0] * 6)


def test_with_two_reference_runs_per_block_the_warm_one_is_the_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the split experiment (docs/history/results/split_reference2_*.json) compares against: blocks as long
    as two reference runs."""
    monkeypatch.setattr("profiler.backends.onnxruntime._REFERENCE_RUNS_PER_BLOCK", 2)
    host = _SlowingHost(switch_after=1000, cold_ms=3.0)
    samples, references = host.run_paired(run_ms=0.5, repeats=10)
    assert references == pytest.approx([2.0] * 10)
    # A block of 8 runs (4 ms: two runs of the 2 ms reference), one of the last 2, two reference runs after each.
    assert host.runs == 10 + 4


def test_measure_model_pairs_by_default_and_fills_reference_ms() -> None:
    backend = OnnxRuntimeBackend(threads=1)
    paired = backend.measure_model(factories.conv_bn_relu_model(), _FIVE_RUNS)
    assert paired.reference_ms is not None and paired.reference_ms > 0
    assert backend.measure_model(factories.conv_bn_relu_model(), _FIVE_RUNS, paired=False).reference_ms is None
    assert OnnxRuntimeBackend(threads=1, paired=False).measure_model(
        factories.conv_bn_relu_model(), _FIVE_RUNS).reference_ms is None
