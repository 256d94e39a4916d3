"""Profiling runs: real onnxruntime measurements into a real store, budgeted, resumable, reported."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from sqlalchemy import Engine, func, select

from predictor.compression.config import parse_config
from predictor.kernels.keys import extract_kernels
from predictor.runtime.optimizer import describe_host
from predictor.store import (
    Measurement,
    create_store_engine,
    get_device,
    list_runs,
    register_device,
    session_factory,
    session_scope,
    upgrade_schema,
)
from profiler.backends.base import MeasureProtocol
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import model_plan
from profiler.runner import ProfileRunner
from profiler.sinks import StoreSink
from tests import factories

FAST = MeasureProtocol(warmup_runs=2, min_repeats=5, max_repeats=30, max_seconds=0.3)


def register(engine: Engine, name: str = "cpu-test") -> None:
    runtime = OnnxRuntimeBackend(threads=1).runtime()
    with session_scope(session_factory(engine)) as session:
        register_device(session, name=name, backend=runtime.backend, execution_provider=runtime.execution_provider,
                      runtime_version=runtime.runtime_version, threads=1, host=describe_host())


def plan(model: onnx.ModelProto):  # type: ignore[no-untyped-def]
    configs = [("int8", parse_config({"default": {"bits": 8}})),
               ("prune50", parse_config({"default": {"prune_ratio": 0.5}}))]
    return model_plan(model, "block", configs)


def test_run_measures_every_kernel_of_each_item_and_reports(store_engine: Engine) -> None:
    register(store_engine)
    sessions = session_factory(store_engine)
    model = factories.residual_model(channels=32, size=28)
    report = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(sessions, "cpu-test"), FAST).run(
        plan(model), budget_minutes=5)
    assert len(report.items_done) == 3 and report.stopped_by == "space exhausted"
    expected = {k.key.key_hash for k in OnnxRuntimeBackend(1).extract_kernels(model)}
    with session_scope(sessions) as session:
        rows = session.scalars(select(Measurement)).all()
        stored = {row.key_hash for row in rows}
        runs = list_runs(session, get_device(session, "cpu-test"))
    assert expected <= stored
    assert len(rows) == len(stored)  # one row per key
    assert all(row.p10_ms <= row.median_ms <= row.p90_ms and row.median_ms > 0 for row in rows)
    assert sum(report.measured_per_op.values()) == len(stored)
    assert runs[0].status == "finished" and runs[0].report["items_done"] == report.items_done
    assert len(report.end_to_end) == 3 and all((e.measured_ms or 0) > 0 for e in report.end_to_end)
    lines = "\n".join(report.summary_lines())
    assert "models profiled" in lines and ("no drift" in lines or "DRIFT" in lines)
    # The profiler's per-node costs the split took off are on record (real calibration, so only their sign).
    costs = runs[0].report["profiler_costs_us"]
    assert costs["event_us"] > 0 and costs["overhead_us"] > 0
    assert "per-node profiler events" in lines


class _RecordingObserver:
    """Records what the runner shows it, and which item the plan yields after each observation."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def observe(self, item, rows) -> None:  # type: ignore[no-untyped-def]
        self.seen.append((item.label, len(rows)))

    def summary(self) -> dict[str, int]:
        return {"observed": len(self.seen)}


def test_observer_sees_every_item_before_the_next_is_drawn(store_engine: Engine) -> None:
    register(store_engine)
    observer = _RecordingObserver()
    seen_when_drawn: list[int] = []

    def items():  # type: ignore[no-untyped-def]
        for item in plan(factories.residual_model(channels=16, size=14)):
            seen_when_drawn.append(len(observer.seen))
            yield item

    report = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(session_factory(store_engine), "cpu-test"),
                           FAST, observer=observer).run(items(), budget_minutes=5)
    assert seen_when_drawn == [0, 1, 2]
    assert [label for label, _ in observer.seen] == ["block/fp32", "block/int8", "block/prune50"]
    assert all(count > 0 for _, count in observer.seen)
    assert report.to_dict()["refinement"] == {"observed": 3}


def test_second_run_measures_nothing_twice(store_engine: Engine) -> None:
    register(store_engine)
    sessions = session_factory(store_engine)
    model = factories.residual_model(channels=16, size=16)
    runner = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(sessions, "cpu-test"), FAST)
    first = runner.run(plan(model), budget_minutes=5)
    second = runner.run(plan(model), budget_minutes=5)
    assert second.items_skipped == len(first.items_done) and not second.items_done
    with session_scope(sessions) as session:
        total = session.scalar(select(func.count()).select_from(Measurement))
        distinct = session.scalar(select(func.count(func.distinct(Measurement.key_hash))))
    assert total == distinct == sum(first.measured_per_op.values())


def test_budget_stops_the_run(store_engine: Engine) -> None:
    register(store_engine)
    ticks = iter(range(0, 10_000, 100))  # every clock read advances 100 s: the first item exhausts 1 minute
    runner = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(session_factory(store_engine), "cpu-test"),
                           FAST, clock=lambda: float(next(ticks)))
    report = runner.run(plan(factories.gemm_model()), budget_minutes=1)
    assert report.stopped_by == "budget"
    assert len(report.items_done) < 3


def test_sparsity_proves_flat_on_onnxruntime_cpu(sqlite_url: str) -> None:
    """onnxruntime's CPU kernels are dense: sparse weights cost what dense ones do, and the run says so."""
    store_engine = create_store_engine(sqlite_url)
    upgrade_schema(store_engine)
    register(store_engine)
    g = factories.GraphBuilder()
    y = "input"
    channels = [16, 24, 32, 40, 48, 56, 64, 72, 80]
    for index, (cin, cout) in enumerate(zip(channels, channels[1:], strict=False)):
        y = g.conv(y, f"conv{index}", cin, cout)
        y = g.node("Relu", [y], f"relu{index}")
    model = g.model({"input": [1, 16, 28, 28]}, y)
    configs = [(f"sparse{s}", parse_config({"default": {"sparsity": s}})) for s in (0.5, 0.9)]
    protocol = MeasureProtocol(warmup_runs=3, min_repeats=20, max_repeats=200, max_seconds=1.0)
    report = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(session_factory(store_engine), "cpu-test"),
                           protocol).run(model_plan(model, "convs", configs), budget_minutes=5)
    conv_ops = [op for op in report.flat_evidence if "Conv" in op]
    assert conv_ops, report.flat_evidence
    assert all("sparsity" in report.flat_axes.get(op, []) for op in conv_ops), report.flat_evidence
    assert any("sparsity has no effect on" in line for line in report.summary_lines())


def test_sigkill_then_rerun_loses_nothing_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    model_path = tmp_path / "block.onnx"
    onnx.save(factories.residual_model(channels=32, size=32), model_path)
    configs_path = tmp_path / "configs.json"
    configs_path.write_text(json.dumps([
        {"name": name, "config": {"default": {"prune_ratio": ratio}}}
        # Enough items that the run is still going when its first rows appear: on a fast host (a Zen 5 VM) six
        # prune ratios were all written before the kill landed, and the rerun had nothing left to measure.
        for name, ratio in [(f"p{percent:02d}", percent / 100) for percent in range(5, 65, 5)]
    ] + [{"name": "int8", "config": {"default": {"bits": 8}}}]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")} | {"LATPRED_HOME": str(home)}
    command = [sys.executable, "-m", "service.cli", "profile", "--device", "cpu", "--for-model", str(model_path),
               "--configs", str(configs_path), "--budget-minutes", "5"]
    database = home / "latpred.db"
    from predictor.store import create_store_engine

    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    engine = None
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            if database.exists():
                engine = engine or create_store_engine(f"sqlite:///{database}")
                with engine.connect() as connection:
                    try:
                        count = connection.execute(select(func.count()).select_from(Measurement)).scalar()
                    except Exception:  # table not created yet
                        continue
                if count:
                    break
        assert victim.poll() is None, "the run finished before it could be killed; make it longer"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert engine is not None
    with engine.connect() as connection:
        before = {row.key_hash for row in connection.execute(select(Measurement.key_hash))}
    assert before
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    with engine.connect() as connection:
        rows = connection.execute(select(Measurement.key_hash, Measurement.run_id)).all()
    hashes = [row.key_hash for row in rows]
    assert len(hashes) == len(set(hashes)), "a kernel was measured twice"
    assert before <= set(hashes), "a measurement of the killed run was lost"
    # Everything the model and its configs need is in the table now.
    from predictor.compression.apply import apply_config
    from predictor.runtime.optimizer import local_runtime

    model = onnx.load(model_path)
    needed = set()
    for entry in json.loads(configs_path.read_text()) + [{"config": {}}]:
        compressed = apply_config(model, parse_config(entry["config"]))
        needed |= {k.key.key_hash for k in extract_kernels(compressed, local_runtime(1))}
    assert needed <= set(hashes)
    assert len({row.run_id for row in rows}) == 2
    engine.dispose()


@pytest.mark.parametrize("threads", [1])
def test_measured_kernels_add_up_to_the_model(threads: int) -> None:
    """The in-graph split: kernel medians sum to the model's wall time less the per-run overhead."""
    backend = OnnxRuntimeBackend(threads)
    model = factories.residual_model(channels=64, size=56)
    protocol = MeasureProtocol(warmup_runs=5, min_repeats=30, max_repeats=300, max_seconds=2.0)
    before = backend.measure_model(model, protocol).median_ms
    timings = backend.measure_kernels(model, protocol)
    after = backend.measure_model(model, protocol).median_ms
    total = sum(t.timing.median_ms for t in timings)
    # A ratio of measurements taken back to back, not a wall-clock bound; the host may change speed
    # between them, hence the bracket and the tolerance.
    low, high = sorted([before, after])
    empty = backend.empty_run_ms(protocol)
    assert (low - empty) * 0.7 <= total <= (high - empty) * 1.3
    assert {t.kernel.name for t in timings} >= {"conv_a", "conv_b"}


def test_kernels_split_the_models_cost_without_the_profiler() -> None:
    """Given the model's end-to-end timing, the kernels add up to it less an empty run, whatever the
    profiler's events leave out between nodes (one session: the split is exactly that of its runs)."""
    backend = OnnxRuntimeBackend(1)
    model = factories.residual_model(channels=32, size=28)
    protocol = MeasureProtocol(warmup_runs=3, min_repeats=20, max_repeats=100, max_seconds=1.0, sessions=1)
    wall = backend.measure_model(model, protocol)
    timings = backend.measure_kernels(model, protocol, wall=wall)
    total = sum(t.timing.median_ms for t in timings)
    assert total == pytest.approx(wall.median_ms - backend.empty_run_ms(protocol), rel=1e-6)
    # Another model timing (as if the host were slower without the profiler) moves the kernels with it.
    slower = backend.measure_kernels(model, protocol, wall=replace(wall, median_ms=wall.median_ms * 1.5))
    assert sum(t.timing.median_ms for t in slower) > total
