"""LatpredClient: retries and errors against a fake transport, and end to end against the in-process app."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.client import LatpredClient, LatpredClientError
from tests.service.conftest import TOKEN, fake_measurement, local_device_body


class FakeServer:
    """Answers from a queue of (status, body) per path; records every request."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers[request.url.path]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def client_for(server: FakeServer, token: str | None = TOKEN) -> LatpredClient:
    return LatpredClient("http://latpred.test", token=token, transport=httpx.MockTransport(server))


MEASUREMENTS = [{"key": {"op_type": "Relu", "inputs": [[1, 8]], "outputs": [[1, 8]]}, "median_ms": 0.1,
                 "p10_ms": 0.09, "p90_ms": 0.11, "repeats": 5}]
PATH = "/api/devices/dev/measurements"


def test_post_measurements_retries_5xx_and_connection_errors() -> None:
    server = FakeServer({PATH: [(503, {"detail": "database unreachable"}),
                                httpx.ConnectError("refused"),
                                (200, {"inserted": 1, "duplicates": 0})]})
    result = client_for(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=3, backoff_s=0.001)
    assert result == {"inserted": 1, "duplicates": 0, "conflicts": 0}
    assert len(server.requests) == 3
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.requests)
    assert json.loads(server.requests[-1].content) == {"run_id": "run-1", "measurements": MEASUREMENTS}


def test_post_measurements_gives_up_after_retries() -> None:
    server = FakeServer({PATH: [(503, {"detail": "database unreachable"})]})
    with pytest.raises(LatpredClientError) as raised:
        client_for(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=2, backoff_s=0.001)
    assert (raised.value.status_code, raised.value.detail) == (503, "database unreachable")
    assert len(server.requests) == 3


def test_client_errors_are_not_retried() -> None:
    server = FakeServer({PATH: [(422, {"detail": "measurements[0].median_ms: bad"})]})
    with pytest.raises(LatpredClientError) as raised:
        client_for(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=3, backoff_s=0.001)
    assert raised.value.status_code == 422
    assert raised.value.detail == "measurements[0].median_ms: bad"
    assert len(server.requests) == 1


def test_post_measurements_sends_batches_and_sums() -> None:
    server = FakeServer({PATH: [(200, {"inserted": 2, "duplicates": 0}), (200, {"inserted": 1, "duplicates": 1})]})
    rows = MEASUREMENTS * 4
    assert client_for(server).post_measurements("dev", "r", rows, batch_rows=2) == {"inserted": 3, "duplicates": 1,
                                                                                     "conflicts": 0}
    assert [len(json.loads(r.content)["measurements"]) for r in server.requests] == [2, 2]


def test_rank_uploads_a_model_once(tmp_path: Any) -> None:
    data = b"fake onnx bytes"
    digest = hashlib.sha256(data).hexdigest()
    model = {"id": digest, "name": "m.onnx", "size_bytes": len(data), "inputs": {}, "kernels": []}
    ranking = {"baseline_ms": 1.0, "ranked": []}
    server = FakeServer({f"/api/models/{digest}": [(404, {"detail": "unknown model"})],
                         "/api/models": [(201, model)], "/api/rank": [(200, ranking)]})
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    client = client_for(server)
    assert client.rank(path, {"a": {}, "b": {"default": {"bits": 8}}}, device="dev") == ranking
    assert client.rank(path, [("c", {})], device="dev", target_speedup=1.5) == ranking
    assert server.paths() == [f"GET /api/models/{digest}", "POST /api/models", "POST /api/rank", "POST /api/rank"]
    bodies = [json.loads(r.content) for r in server.requests if r.url.path == "/api/rank"]
    assert bodies[0]["candidates"] == [{"name": "a", "config": {}}, {"name": "b", "config": {"default": {"bits": 8}}}]
    assert bodies[1] == {"device": "dev", "model_id": digest, "candidates": [{"name": "c", "config": {}}],
                         "target_speedup": 1.5}


def test_unreachable_server_is_a_client_error() -> None:
    client = LatpredClient("http://127.0.0.1:1", timeout=2)
    with pytest.raises(LatpredClientError) as raised:
        client.health()
    assert raised.value.status_code == 0
    assert "cannot reach" in raised.value.detail


def test_client_module_does_not_import_fastapi() -> None:
    code = "import sys, service.client; print('fastapi' in sys.modules, 'sqlalchemy' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False"]


def test_client_end_to_end_in_process(api: TestClient, residual_bytes: bytes) -> None:
    client = LatpredClient("", token=TOKEN, http_client=api)
    assert client.health() == {"status": "ok", "database": "ok"}
    device = local_device_body()
    assert client.register_device(**device)["name"] == device["name"]
    assert [d["name"] for d in client.devices()] == [device["name"]]
    assert client.start_run(device["name"], "run-1", budget_minutes=5)["status"] == "running"
    model = client.upload_model(residual_bytes, input_shapes={"input": [1, 32, 28, 28]})
    rows = [fake_measurement(kernel, 0.25) for kernel in model["kernels"]]
    assert client.post_measurements(device["name"], "run-1", rows) == {"inserted": len(rows), "duplicates": 0,
                                                                        "conflicts": 0}
    assert client.post_measurements(device["name"], "run-1", rows) == {"inserted": 0, "duplicates": len(rows),
                                                                        "conflicts": 0}
    assert client.finish_run(device["name"], "run-1", report={"kernels": len(rows)})["status"] == "finished"
    estimate = client.predict(model["id"], device["name"])
    assert estimate["latency_ms"] == pytest.approx(0.25 * len(rows))
    ranking = client.rank(residual_bytes, {"fp32": {}, "int8": {"default": {"bits": 8}}}, device=device["name"])
    assert {row["name"] for row in ranking["ranked"]} == {"fp32", "int8"}
    assert client.measurements(device["name"], limit=2)["count"] == len(rows)
    with pytest.raises(LatpredClientError) as raised:
        client.predict(model["id"], "nope")
    assert raised.value.status_code == 404
    assert raised.value.detail.startswith("unknown device 'nope'")
    anonymous = LatpredClient("", http_client=api)
    with pytest.raises(LatpredClientError) as denied:
        anonymous.register_device(**device)
    assert denied.value.status_code == 401
