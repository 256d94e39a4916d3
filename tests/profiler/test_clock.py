"""Runs are timed by the calling thread's CPU time with one thread, by wall time with more."""
from __future__ import annotations

import time

import onnx
import pytest
from sqlalchemy import Engine

from predictor.estimate import DevicePredictor
from predictor.runtime import describe_host
from predictor.store import get_device, session_factory, session_scope, upsert_device
from profiler.backends.base import MeasureProtocol, Timing
from profiler.backends.onnxruntime import OnnxRuntimeBackend
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
    samples = backend._run_until_stable(_SleepingSession(), {}, _FIVE_RUNS)
    assert len(samples) == 5
    assert max(samples) < 5.0, samples


def test_several_threads_use_wall_time() -> None:
    backend = OnnxRuntimeBackend(threads=2)
    assert backend.clock_name == "wall"
    samples = backend._run_until_stable(_SleepingSession(), {}, _FIVE_RUNS)
    assert min(samples) >= 20.0, samples


@pytest.mark.parametrize("threads", [1, 2])
def test_real_model_is_timed_with_either_clock(threads: int) -> None:
    timing = OnnxRuntimeBackend(threads=threads).measure_model(factories.conv_bn_relu_model(), _FIVE_RUNS)
    assert timing.repeats == 5
    assert 0 < timing.p10_ms <= timing.median_ms <= timing.p90_ms


class _DriftingBackend(OnnxRuntimeBackend):
    """The real backend, except that the reference kernel reads 1 ms until the first item, then 2 ms."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads=threads)
        self.reference_calls = 0

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol) -> Timing:
        if model.graph.name == reference_model().graph.name:
            self.reference_calls += 1
            value = 1.0 if self.reference_calls <= 2 else 2.0  # warm-up and baseline, then every item
            return Timing(median_ms=value, p10_ms=value, p90_ms=value, repeats=10)
        return super().measure_model(model, protocol)


@pytest.mark.parametrize(("threads", "expected_factor"), [(1, 1.0), (2, 0.5)])
def test_drift_is_reported_and_only_wall_time_runs_are_scaled(
        store_engine: Engine, threads: int, expected_factor: float) -> None:
    runtime = OnnxRuntimeBackend(threads=threads).runtime()
    with session_scope(session_factory(store_engine)) as session:
        upsert_device(session, name="drift", backend=runtime.backend, execution_provider=runtime.execution_provider,
                      runtime_version=runtime.runtime_version, threads=threads, host=describe_host())
    items = model_plan(factories.conv_bn_relu_model(), "block", [])
    report = ProfileRunner("drift", _DriftingBackend(threads), StoreSink(session_factory(store_engine), "drift"),
                           _FIVE_RUNS).run(items, budget_minutes=5)
    assert report.clock == ("thread_cpu" if threads == 1 else "wall")
    assert report.drift and report.drift[0]["ratio"] == pytest.approx(2.0)
    assert [e["compensation"] for e in report.end_to_end] == [pytest.approx(expected_factor)]
    assert "DRIFT" in "\n".join(report.summary_lines())
    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "drift"))
    # Validation scales measurements only against a table that was scaled.
    assert (predictor.reference_ms is None) == (threads == 1)
