"""Runs are timed by the calling thread's CPU time with one thread, by wall time with more."""
from __future__ import annotations

import time

import pytest

from profiler.backends.base import MeasureProtocol
from profiler.backends.onnxruntime import OnnxRuntimeBackend
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
