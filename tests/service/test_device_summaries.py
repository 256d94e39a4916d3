"""`latpred devices`, `GET /api/v1/devices/{name}` and the dashboard's devices page tell the same numbers: the
store's one device summary (predictor.store.summarize_device)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from predictor.store import (
    MeasurementIn,
    add_measurements,
    create_store_engine,
    get_device,
    register_device,
    save_regressor,
    session_factory,
    session_scope,
    start_run,
    upgrade_schema,
)
from service.app import create_app
from service.dashboard.routes import _overview
from service.settings import Settings
from tests.service.cli_runs import run_latpred
from tests.service.conftest import AUTH, TOKEN


def test_cli_rest_and_dashboard_summarize_a_device_alike(cli_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli_home.mkdir(parents=True)
    url = f"sqlite:///{cli_home / 'latpred.db'}"
    engine = create_store_engine(url)
    upgrade_schema(engine)
    factory = session_factory(engine)
    with session_scope(factory) as session:
        device = register_device(session, name="xeon", backend="onnxruntime",
                                 execution_provider="CPUExecutionProvider", runtime_version="1.18.0", threads=1,
                                 host="Intel Xeon")
        for run_id, keys in (("run-1", [(0, "Conv"), (1, "Conv"), (2, "Conv"), (9, "Gemm")]), ("run-2", [(0, "Conv")])):
            start_run(session, device, run_id)
            add_measurements(session, device, run_id, [
                MeasurementIn(key={"op": op_type, "index": index}, key_hash=f"{index:064x}", op_type=op_type, bits=32,
                              median_ms=1.0, p10_ms=0.9, p90_ms=1.2, repeats=50) for index, op_type in keys])
        save_regressor(session, device, "Conv", "tree\n", {"mape": 0.1}, "v1")

    run = run_latpred(capsys, "devices", "--json")
    assert run.status == 0, run.stderr
    [listed] = json.loads(run.stdout)["devices"]
    assert (listed["measurements"], listed["op_types"], listed["regressors"], listed["runs"]) == (5, 2, ["Conv"], 2)

    with TestClient(create_app(Settings(database_url=url, home=cli_home, api_tokens=TOKEN))) as client:
        detail = client.get("/api/v1/devices/xeon", headers=AUTH).json()
    assert (detail["measurement_count"], detail["measurements"]) == (5, {"Conv": 4, "Gemm": 1})
    assert list(detail["regressors"]) == ["Conv"] and len(detail["runs"]) == 2

    with session_scope(factory) as session:
        overview = _overview(session, get_device(session, "xeon"))
    assert (overview.measurements, overview.op_types, overview.runs) == (5, ["Conv", "Gemm"], 2)
    assert overview.last_run is not None and overview.last_run.run_id == "run-2"
    engine.dispose()
