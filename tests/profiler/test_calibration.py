"""Context calibration: probes measured for real on onnxruntime, once per device, and the fit they feed."""
from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine

from predictor.estimation.context import ContextModel
from predictor.estimation.overhead import choose_context_from_probes, fit_overhead
from predictor.store import get_device, list_runs, session_factory, session_scope
from profiler.backends.base import MeasureProtocol
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.calibration import (
    AUTO_MIN_BUDGET_MINUTES,
    CALIBRATION_ITEM,
    PROBES,
    calibrate_by_default,
    measure_context_probes,
    probe_model,
)
from profiler.runner import ProfileRunner
from profiler.sinks import StoreSink
from tests import factories
from tests.profiler.test_runner import FAST, plan, register

TINY = MeasureProtocol(warmup_runs=1, min_repeats=3, max_repeats=5, max_seconds=0.1)


def test_calibration_is_on_by_default_for_the_default_space_with_a_budget_for_it() -> None:
    assert calibrate_by_default(None, for_model=False, budget_minutes=30.0) is True
    assert calibrate_by_default(None, for_model=False, budget_minutes=AUTO_MIN_BUDGET_MINUTES) is True
    assert calibrate_by_default(None, for_model=False, budget_minutes=1.0) is False
    assert calibrate_by_default(None, for_model=True, budget_minutes=30.0) is False
    assert calibrate_by_default(True, for_model=True, budget_minutes=0.1) is True
    assert calibrate_by_default(False, for_model=False, budget_minutes=30.0) is False


def test_the_cli_help_states_the_default() -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(app, ["profile", "--help"], env={"COLUMNS": "300", "NO_COLOR": "1"})
    assert result.exit_code == 0
    assert f"budget of at least {AUTO_MIN_BUDGET_MINUTES:g} minutes" in " ".join(result.output.split())


def test_probe_models_grow_by_the_chain_and_keep_the_probe() -> None:
    backend = OnnxRuntimeBackend(1)
    for probe in PROBES:
        kernels = [backend.extract_kernels(probe_model(probe, chain)) for chain in (0, 2)]
        assert any(n.startswith("probe") for k in kernels[0] for n in k.nodes)
        assert len(kernels[1]) > len(kernels[0])


def test_measure_context_probes_on_onnxruntime() -> None:
    rows = measure_context_probes(OnnxRuntimeBackend(1), TINY, rounds=1, chains=(0, 2))
    assert [(row["probe"], row["chain"]) for row in rows] == [(p, c) for p in PROBES for c in (0, 2)]
    for row in rows:
        assert row["probe_ms"] > 0 and row["ratio"] > 0 and row["reference_ms"] > 0
    by = {(row["probe"], row["chain"]): row for row in rows}
    for probe in PROBES:
        # Two 256-channel convs add 2 x 2.4 MB of weights to every run.
        assert by[(probe, 2)]["traffic_bytes"] - by[(probe, 0)]["traffic_bytes"] > 4.7e6
    assert by[("depthwise3x3_96x56", 0)]["sensitivity"] > 0.9  # memory-bound
    assert 0.2 < by[("stem3x3s2_3to16x224", 0)]["sensitivity"] < 0.9


def synthetic_probe_rows(model: ContextModel | None, noise: float = 0.0, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for probe, sens in (("depthwise", 0.97), ("stem", 0.6)):
        for chain, traffic in ((0, 7e6), (2, 12e6), (4, 19e6), (8, 30e6), (16, 52e6), (32, 96e6)):
            for round_index in range(2):
                factor = 1.0 if model is None else float(model.factors(np.array([sens]), traffic)[0])
                rows.append({"probe": probe, "chain": chain, "round": round_index, "traffic_bytes": traffic,
                             "sensitivity": sens, "ratio": 0.1 * factor * float(np.exp(rng.normal(0, noise)))})
    return rows


def test_the_probe_fit_recovers_a_context_model_and_rejects_noise() -> None:
    truth = ContextModel(beta=0.6, base_mb=16.0, width_octaves=1.5)
    found, figures = choose_context_from_probes(synthetic_probe_rows(truth))
    assert found == truth and figures["explained"] == pytest.approx(1.0)
    found, figures = choose_context_from_probes(synthetic_probe_rows(truth, noise=0.02))
    assert found is not None and figures["explained"] > 0.9
    # Pure noise: no context model is kept.
    found, figures = choose_context_from_probes(synthetic_probe_rows(None, noise=0.03))
    assert found is None and figures["explained"] < 0.5
    assert choose_context_from_probes([]) == (None, {})


def test_a_run_calibrates_once_per_device_and_the_overhead_fit_uses_it(store_engine: Engine) -> None:
    register(store_engine)
    sessions = session_factory(store_engine)
    items = plan(factories.residual_model(channels=16, size=14))
    first = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(sessions, "cpu-test"), FAST,
                          calibrate_context=True, calibration_chains=(0, 2)).run(items, budget_minutes=5)
    assert CALIBRATION_ITEM in first.items_done and len(first.context_probes) == 2 * len(PROBES) * 2
    assert any("context calibration: depthwise3x3_96x56 x" in line for line in first.summary_lines())
    # A second run of the device skips the stage (and the items it already measured).
    second = ProfileRunner("cpu-test", OnnxRuntimeBackend(1), StoreSink(sessions, "cpu-test"), FAST,
                           calibrate_context=True, calibration_chains=(0, 2)).run(items, budget_minutes=5)
    assert second.context_probes == [] and second.items_skipped == 3
    with session_scope(sessions) as session:
        device = get_device(session, "cpu-test")
        reports = [run.report for run in list_runs(session, device)]
        assert len(reports[0]["context_probes"]) == len(first.context_probes)
        overhead = fit_overhead(session, device)
    assert overhead is not None
    # The probes decided: either a context model chosen by them, or their figures saying it explains too little.
    assert overhead.get("context", {}).get("chosen_by", "calibration") == "calibration"
    assert overhead["context_calibration"]["probe_points"] == len(PROBES)
