"""A real server process (what `latpred serve` runs) driven by LatpredClient over HTTP."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictor.client import LatpredClient
from predictor.errors import ServiceHTTPError
from service.server import ServerStartError, server_process
from tests import factories
from tests.service.conftest import TOKEN, fake_measurement, local_device_body


@pytest.fixture
def server_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")}
    env.update(LATPRED_HOME=str(tmp_path / "home"), LATPRED_DATABASE_URL=store_url, LATPRED_API_TOKENS=TOKEN)
    with server_process(env, log_path=tmp_path / "server.log") as server:
        yield server.url


def test_served_api_end_to_end(server_url: str, tmp_path: Path) -> None:
    model_path = tmp_path / "block.onnx"
    model_path.write_bytes(factories.residual_model().SerializeToString())
    with LatpredClient(server_url, token=TOKEN, timeout_s=120) as client:
        assert client.health() == {"status": "ok", "database": "ok"}
        device = local_device_body("served-cpu")
        client.register_device(**device)
        assert [d["name"] for d in client.devices()] == ["served-cpu"]

        model = client.upload_model(model_path)
        assert client.upload_model(model_path)["id"] == model["id"]
        medians = {k["key_hash"]: 0.05 * (i + 1) for i, k in enumerate(model["kernels"])}
        rows = [fake_measurement(k, medians[k["key_hash"]]) for k in model["kernels"]]
        client.start_run("served-cpu", "agent-run-1", budget_minutes=10)
        assert client.post_measurements("served-cpu", "agent-run-1", rows)["inserted"] == len(rows)
        client.finish_run("served-cpu", "agent-run-1", report={"kernels": len(rows)})

        estimate = client.predict(model["id"], "served-cpu")
        assert estimate["latency_ms"] == pytest.approx(sum(medians.values()))
        assert estimate["table_hit_rate"] == 1.0

        ranking = client.rank(model_path, {"fp32": {}, "pruned": {"default": {"prune_ratio": 0.5}},
                                           "int8": {"default": {"bits": 8}}}, device="served-cpu")
        assert ranking["baseline_ms"] == pytest.approx(sum(medians.values()))
        assert [r["latency_ms"] for r in ranking["ranked"]] == sorted(r["latency_ms"] for r in ranking["ranked"])
        detail = client.device("served-cpu")
        assert detail["measurement_count"] == len(rows)
        assert [run["status"] for run in detail["runs"]] == ["finished"]

    with pytest.raises(ServiceHTTPError) as denied:
        LatpredClient(server_url, token="wrong").register_device(**device)
    assert denied.value.status_code == 401


def test_a_server_that_cannot_start_is_said_so_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no interpreter here'\nexit 3\n")
    broken.chmod(0o755)
    with pytest.raises(ServerStartError, match=r"exited with 3:\nno interpreter here"):
        with server_process({}, log_path=log_path, python=str(broken)):
            raise AssertionError("never reached")
