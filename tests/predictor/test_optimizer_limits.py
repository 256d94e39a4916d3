"""The runtime's optimizer under limits: in a reused worker process, killed at the time limit, memory capped."""
from __future__ import annotations

import onnx
import pytest

from predictor.errors import InvalidModelError
from predictor.kernels.keys import extract_kernels
from predictor.runtime import optimizer
from predictor.runtime.optimizer import OptimizerLimits, local_runtime, optimize_model, optimizer_limits
from tests import factories

RUNTIME = local_runtime(1)
LIMITS = OptimizerLimits(timeout_s=60, memory_mb=2048)


def op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def test_the_worker_returns_what_the_optimizer_returns_here() -> None:
    model = factories.attention_model()
    assert op_types(optimize_model(model, RUNTIME, limits=LIMITS)) == op_types(optimize_model(model, RUNTIME))
    basic = optimize_model(factories.conv_bn_relu_model(), RUNTIME, level="basic", limits=LIMITS)
    assert "BatchNormalization" not in op_types(basic) and "Conv" in op_types(basic)


def test_limits_from_the_context_send_the_optimizer_out_of_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def in_this_process(*args: object) -> bytes:
        raise AssertionError("optimized in this process")

    model = factories.residual_model(channels=8, size=8)
    expected = [kernel.key for kernel in extract_kernels(model, RUNTIME)]
    monkeypatch.setattr(optimizer, "_optimize_bytes", in_this_process)
    with optimizer_limits(LIMITS):
        assert [kernel.key for kernel in extract_kernels(model, RUNTIME)] == expected
    with pytest.raises(AssertionError, match="in this process"):
        optimize_model(model, RUNTIME)


def idle_worker_pids() -> set[int]:
    return {worker.process.pid for worker in optimizer._workers()._idle if worker.process.pid is not None}


def test_time_limit_kills_a_busy_worker_and_the_next_call_gets_a_fresh_one() -> None:
    model = factories.gemm_model(k=2048, n=2048)  # 16 MB to parse: far more than a millisecond
    optimize_model(model, RUNTIME, limits=LIMITS)  # a started worker: only the optimizer's own time counts
    before = idle_worker_pids()
    with pytest.raises(InvalidModelError, match=r"time limit of 1e-06 s"):
        optimize_model(model, RUNTIME, limits=OptimizerLimits(timeout_s=1e-6))
    assert len(before - idle_worker_pids()) == 1, "the busy worker was killed, the others kept"
    assert op_types(optimize_model(model, RUNTIME, limits=LIMITS)) == ["Gemm"]


def test_time_limit_holds_below_a_millisecond() -> None:
    """A tiny model optimized within the millisecond poll waits at least is still refused: the limit is exact."""
    model = factories.gemm_model(k=8, n=8)
    optimize_model(model, RUNTIME, limits=LIMITS)
    for _ in range(5):
        with pytest.raises(InvalidModelError, match=r"time limit"):
            optimize_model(model, RUNTIME, limits=OptimizerLimits(timeout_s=1e-6))


def test_memory_limit_is_reported_as_such_and_the_worker_recovers() -> None:
    model = factories.gemm_model(k=2048, n=2048)  # a 16 MB weight
    with pytest.raises(InvalidModelError, match=r"memory limit of 1 MB"):
        optimize_model(model, RUNTIME, limits=OptimizerLimits(timeout_s=60, memory_mb=1))
    assert "Gemm" in op_types(optimize_model(model, RUNTIME, limits=LIMITS))


def test_a_tight_memory_limit_holds_on_a_worker_that_ran_big_models_under_a_loose_one() -> None:
    """A worker's heap keeps freed 16 MB blocks; a job under 1 MB must not get them for free (it did in about
    half of the tries before workers were retired by what they kept, under the next job's limit)."""
    model = factories.gemm_model(k=2048, n=2048)  # a 16 MB weight
    loose = OptimizerLimits(timeout_s=60, memory_mb=4096)
    with optimizer_limits(loose):
        for _ in range(3):
            assert [kernel.op_type for kernel in extract_kernels(model, RUNTIME)] == ["Gemm"]
    with optimizer_limits(OptimizerLimits(timeout_s=60, memory_mb=1)), \
            pytest.raises(InvalidModelError, match=r"memory limit of 1 MB"):
        extract_kernels(model, RUNTIME)


def test_a_worker_that_kept_more_than_half_a_jobs_limit_is_retired_before_that_job() -> None:
    model = factories.gemm_model(k=64, n=64)
    optimize_model(model, RUNTIME, limits=LIMITS)
    for worker in optimizer._workers()._idle:
        worker.kept_bytes = 64 * 2**20  # as if its heap kept 64 MB of an earlier job's
    kept = idle_worker_pids()
    # Under a loose limit the workers are still good: the one that runs the job is one of them.
    optimize_model(model, RUNTIME, limits=OptimizerLimits(timeout_s=60, memory_mb=1024))
    assert idle_worker_pids() & kept
    for worker in optimizer._workers()._idle:
        worker.kept_bytes = 64 * 2**20
    kept = idle_worker_pids()
    # Under 100 MB, 64 MB kept is too much: a fresh worker runs it, and the retired ones are gone.
    optimize_model(model, RUNTIME, limits=OptimizerLimits(timeout_s=60, memory_mb=100))
    assert not idle_worker_pids() & kept


def test_an_unloadable_model_says_why_as_it_does_in_process() -> None:
    model = factories.gemm_model()
    model.graph.node[0].input[1] = "missing"
    with pytest.raises(InvalidModelError) as here:
        optimize_model(model, RUNTIME)
    with pytest.raises(InvalidModelError) as there:
        optimize_model(model, RUNTIME, limits=LIMITS)
    assert str(there.value) == str(here.value)
