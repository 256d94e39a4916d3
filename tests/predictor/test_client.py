"""The one HTTP client (predictor.client), sync and async: a timeout told from an unreachable server on real
sockets, a real `latpred serve` end to end, and its retry rules against a scripted transport beside them."""
from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from predictor.client import AsyncLatpredClient, LatpredClient
from predictor.errors import LatpredError, ServiceError, ServiceHTTPError, ServiceTimeout, ServiceUnreachable
from tests import factories
from tests.predictor.conftest import CANDIDATES, PROFILED_DEVICE, SERVICE_TOKEN, ProfiledStore, device_fields


class SilentServer:
    """A listening socket that accepts connections, reads what is sent and never answers; counts connections."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.accepted.append(connection)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self.accepted:
            connection.close()
        self.listener.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def closed_port_url() -> str:
    """A loopback URL whose port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_server_that_never_answers_is_a_timeout(silent_server: SilentServer) -> None:
    started = time.monotonic()
    with LatpredClient(silent_server.url, timeout_s=0.3) as client, pytest.raises(ServiceTimeout) as raised:
        client.health()
    assert time.monotonic() - started >= 0.3
    assert not isinstance(raised.value, ServiceUnreachable) and isinstance(raised.value, LatpredError)
    assert raised.value.timeout_s == 0.3
    assert "no answer within 0.3 s" in str(raised.value) and "/api/v1/health" in str(raised.value)
    assert len(silent_server.accepted) == 1


def test_a_closed_port_is_unreachable(closed_port_url: str) -> None:
    started = time.monotonic()
    with LatpredClient(closed_port_url, timeout_s=5) as client, pytest.raises(ServiceUnreachable) as raised:
        client.health()
    assert time.monotonic() - started < 2  # refused at once, not waited out
    assert not isinstance(raised.value, ServiceTimeout)
    assert str(raised.value).startswith(f"cannot reach {closed_port_url}")


def test_retries_keep_the_kind_of_failure(silent_server: SilentServer, closed_port_url: str) -> None:
    with LatpredClient(silent_server.url, timeout_s=0.2, retries=2, backoff_s=0.01) as client:
        with pytest.raises(ServiceTimeout):
            client.health()
    assert len(silent_server.accepted) == 3
    with LatpredClient(closed_port_url, retries=2, backoff_s=0.01) as client, pytest.raises(ServiceUnreachable):
        client.devices()


def test_the_async_client_tells_them_apart_too(silent_server: SilentServer, closed_port_url: str) -> None:
    async def failures() -> list[ServiceError]:
        errors: list[ServiceError] = []
        for url in (silent_server.url, closed_port_url):
            async with AsyncLatpredClient(url, timeout_s=0.3) as client:
                try:
                    await client.health()
                except ServiceError as exc:
                    errors.append(exc)
        return errors

    timeout, unreachable = asyncio.run(failures())
    assert type(timeout) is ServiceTimeout and type(unreachable) is ServiceUnreachable


def test_errors_carry_the_status_and_the_services_message(served: str) -> None:
    with LatpredClient(served, token=SERVICE_TOKEN) as client:
        with pytest.raises(ServiceHTTPError) as raised:
            client.device("nope")
        assert raised.value.status_code == 404
        assert raised.value.detail.startswith("unknown device 'nope'")
        assert str(raised.value) == f"HTTP 404: {raised.value.detail}"
    with LatpredClient(served, token="wrong") as client, pytest.raises(ServiceHTTPError) as denied:
        client.register_device(**device_fields("intruder"))
    assert denied.value.status_code == 401


def test_an_agent_and_a_tool_end_to_end(served: str) -> None:
    """What a device agent and a compression tool do through the client, on a real server."""
    model_bytes = factories.residual_model(channels=16, size=14).SerializeToString()
    with LatpredClient(served, token=SERVICE_TOKEN, timeout_s=120) as client:
        assert client.health() == {"status": "ok", "database": "ok"}
        device = device_fields("client-cpu")
        assert client.register_device(**device)["name"] == "client-cpu"
        assert client.register_device(**device)["name"] == "client-cpu"  # the same fields again: the device
        with pytest.raises(ServiceHTTPError) as conflict:
            client.register_device(**(device | {"threads": 4}))
        assert conflict.value.status_code == 409
        assert {"client-cpu", PROFILED_DEVICE} <= {d["name"] for d in client.devices()}
        assert client.start_run("client-cpu", "client-run-1", budget_minutes=5)["status"] == "running"
        model = client.upload_model(model_bytes)
        assert model["id"] == hashlib.sha256(model_bytes).hexdigest()
        assert client.ensure_model(model_bytes) == model["id"]
        rows = [{"key": k["key"], "median_ms": 0.25, "p10_ms": 0.2, "p90_ms": 0.3, "repeats": 20}
                for k in model["kernels"]]
        assert client.post_measurements("client-cpu", "client-run-1", rows, batch_rows=2) == {
            "inserted": len(rows), "duplicates": 0, "conflicts": 0}
        assert client.post_measurements("client-cpu", "client-run-1", rows) == {
            "inserted": 0, "duplicates": len(rows), "conflicts": 0}
        assert client.finish_run("client-cpu", "client-run-1", report={"kernels": len(rows)})["status"] == "finished"
        assert client.measurements("client-cpu", limit=2)["count"] == len(rows)
        estimate = client.predict(model["id"], "client-cpu")
        assert estimate["latency_ms"] == pytest.approx(0.25 * len(rows) + estimate["overhead_ms"])
        ranking = client.rank(model_bytes, {"fp32": {}, "int8": {"default": {"bits": 8}}}, device="client-cpu")
        assert {row["name"] for row in ranking["ranked"]} == {"fp32", "int8"}
        assert [run["status"] for run in client.device("client-cpu")["runs"]] == ["finished"]


def test_the_async_client_answers_as_the_sync_one(served: str, profiled_store: ProfiledStore) -> None:
    model = profiled_store.model_bytes
    with LatpredClient(served, token=SERVICE_TOKEN) as client:
        model_id = client.ensure_model(model)
        expected = client.predict(model_id, PROFILED_DEVICE, CANDIDATES["int8"])
        expected_ranking = client.rank(model, CANDIDATES, PROFILED_DEVICE)

    async def ask() -> tuple[Any, ...]:
        async with AsyncLatpredClient(served, token=SERVICE_TOKEN) as client:
            assert (await client.health())["status"] == "ok"
            assert await client.ensure_model(model) == model_id
            # Questions in flight at once, each answered.
            return await asyncio.gather(
                client.predict(model_id, PROFILED_DEVICE, CANDIDATES["int8"]),
                client.predict(model_id, PROFILED_DEVICE, CANDIDATES["int8"]),
                client.rank(model, CANDIDATES, PROFILED_DEVICE),
                client.device(PROFILED_DEVICE),
            )

    first, second, ranking, device = asyncio.run(ask())
    assert first == second == expected
    assert ranking == expected_ranking
    assert device["name"] == PROFILED_DEVICE and device["measurement_count"] > 0


class ScriptedServer:
    """Answers from a queue of (status, body[, headers]) or exceptions per path; records every request."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers[request.url.path]
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        status, body, *headers = answer
        return httpx.Response(status, json=body, headers=headers[0] if headers else None)

    def paths(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests]


def scripted_client(server: ScriptedServer, **options: Any) -> LatpredClient:
    return LatpredClient("http://latpred.test", token=SERVICE_TOKEN, transport=httpx.MockTransport(server),
                         **options)


MEASUREMENTS = [{"key": {"op_type": "Relu", "inputs": [[1, 8]], "outputs": [[1, 8]]}, "median_ms": 0.1,
                 "p10_ms": 0.09, "p90_ms": 0.11, "repeats": 5}]
PATH = "/api/v1/devices/dev/measurements"


def test_uploads_retry_5xx_and_connection_errors() -> None:
    server = ScriptedServer({PATH: [(503, {"detail": "database unreachable"}), httpx.ConnectError("refused"),
                                    (200, {"inserted": 1, "duplicates": 0})]})
    result = scripted_client(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=3, backoff_s=0.001)
    assert result == {"inserted": 1, "duplicates": 0, "conflicts": 0}
    assert len(server.requests) == 3
    assert all(r.headers["authorization"] == f"Bearer {SERVICE_TOKEN}" for r in server.requests)
    assert json.loads(server.requests[-1].content) == {"run_id": "run-1", "measurements": MEASUREMENTS}


def test_retries_give_up_with_the_last_answer() -> None:
    server = ScriptedServer({PATH: [(503, {"detail": "database unreachable"})]})
    with pytest.raises(ServiceHTTPError) as raised:
        scripted_client(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=2, backoff_s=0.001)
    assert (raised.value.status_code, raised.value.detail) == (503, "database unreachable")
    assert len(server.requests) == 3


def test_client_errors_are_not_retried_and_problem_codes_are_kept() -> None:
    problem = {"type": "about:blank", "title": "Unprocessable Content", "status": 422,
               "detail": "measurements[0].median_ms: bad", "code": "validation_error"}
    server = ScriptedServer({PATH: [(422, problem)]})
    with pytest.raises(ServiceHTTPError) as raised:
        scripted_client(server).post_measurements("dev", "run-1", MEASUREMENTS, retries=3, backoff_s=0.001)
    assert (raised.value.status_code, raised.value.detail, raised.value.code) == (
        422, "measurements[0].median_ms: bad", "validation_error")
    assert len(server.requests) == 1


def test_a_busy_service_is_retried_after_its_retry_after() -> None:
    server = ScriptedServer({"/api/v1/health": [(503, {"detail": "busy"}, {"Retry-After": "1"}),
                                             (200, {"status": "ok", "database": "ok"})]})
    started = time.monotonic()
    assert scripted_client(server, retries=1, backoff_s=0.001).health()["status"] == "ok"
    assert time.monotonic() - started >= 1.0


def test_measurements_go_in_batches_and_sum() -> None:
    server = ScriptedServer({PATH: [(200, {"inserted": 2, "duplicates": 0}),
                                    (200, {"inserted": 1, "duplicates": 1, "conflicts": 1})]})
    rows = MEASUREMENTS * 4
    assert scripted_client(server).post_measurements("dev", "r", rows, batch_rows=2) == {
        "inserted": 3, "duplicates": 1, "conflicts": 1}
    assert [len(json.loads(r.content)["measurements"]) for r in server.requests] == [2, 2]


def test_rank_uploads_a_model_once(tmp_path: Any) -> None:
    data = b"fake onnx bytes"
    digest = hashlib.sha256(data).hexdigest()
    model = {"id": digest, "name": "m.onnx", "size_bytes": len(data), "inputs": {}, "kernels": []}
    ranking = {"baseline_ms": 1.0, "ranked": []}
    server = ScriptedServer({f"/api/v1/models/{digest}": [(404, {"detail": "unknown model"})],
                             "/api/v1/models": [(201, model)], "/api/v1/rank": [(200, ranking)]})
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    client = scripted_client(server)
    assert client.rank(path, {"a": {}, "b": {"default": {"bits": 8}}}, device="dev") == ranking
    assert client.rank(path, [("c", {})], device="dev", target_speedup=1.5) == ranking
    assert server.paths() == [f"GET /api/v1/models/{digest}", "POST /api/v1/models", "POST /api/v1/rank",
                              "POST /api/v1/rank"]
    bodies = [json.loads(r.content) for r in server.requests if r.url.path == "/api/v1/rank"]
    assert bodies[0]["candidates"] == [{"name": "a", "config": {}}, {"name": "b", "config": {"default": {"bits": 8}}}]
    assert bodies[1] == {"device": "dev", "model_id": digest, "candidates": [{"name": "c", "config": {}}],
                         "target_speedup": 1.5}


def test_device_names_are_one_path_segment() -> None:
    server = ScriptedServer({"/api/v1/devices/a/b c": [(200, {"name": "a/b c"})]})
    assert scripted_client(server).device("a/b c") == {"name": "a/b c"}
    assert server.requests[0].url.raw_path == b"/api/v1/devices/a%2Fb%20c"


def test_the_client_module_imports_no_web_framework_or_store() -> None:
    code = ("import sys, predictor.client; "
            "print(*[m in sys.modules for m in ('fastapi', 'sqlalchemy', 'onnx', 'onnxruntime')])")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["False", "False", "False", "False"]
