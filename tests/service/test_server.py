"""A real server process (what `latpred serve` runs) driven by LatpredClient over HTTP."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import LatpredClient, LatpredClientError
from tests import factories
from tests.service.conftest import TOKEN, fake_measurement, local_device_body

_START_TIMEOUT_S = 60.0
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def server_url(store_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")}
    env.update(LATPRED_HOME=str(tmp_path / "home"), LATPRED_DATABASE_URL=store_url, LATPRED_API_TOKENS=TOKEN)
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", f"from service.server import run_server; run_server('127.0.0.1', {port})"],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        probe = LatpredClient(url, timeout=2)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                if probe.health()["status"] == "ok":
                    break
            except LatpredClientError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{(tmp_path / 'server.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_served_api_end_to_end(server_url: str, tmp_path: Path) -> None:
    model_path = tmp_path / "block.onnx"
    model_path.write_bytes(factories.residual_model().SerializeToString())
    with LatpredClient(server_url, token=TOKEN, timeout=120) as client:
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

    with pytest.raises(LatpredClientError) as denied:
        LatpredClient(server_url, token="wrong").register_device(**device)
    assert denied.value.status_code == 401
