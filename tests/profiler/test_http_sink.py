"""A device agent posting to the REST service: same results as writing to the store, idempotent on retry."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from predictor.compression.config import parse_config
from predictor.runtime.optimizer import describe_host
from profiler.backends.base import MeasureProtocol
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import model_plan
from profiler.runner import ProfileRunner
from profiler.sinks import HttpSink, UploadError
from service.app import create_app
from service.settings import Settings
from tests import factories

FAST = MeasureProtocol(warmup_runs=2, min_repeats=5, max_repeats=30, max_seconds=0.3)
TOKEN = "agent-token"


@pytest.fixture
def client(tmp_path: Path, store_url: str):  # type: ignore[no-untyped-def]
    app = create_app(Settings(home=tmp_path, database_url=store_url, api_tokens=TOKEN))
    with TestClient(app) as test_client:
        yield test_client


def device_fields(name: str) -> dict[str, object]:
    runtime = OnnxRuntimeBackend(1).runtime()
    return {"name": name, "backend": runtime.backend, "execution_provider": runtime.execution_provider,
            "runtime_version": runtime.runtime_version, "threads": 1, "host": describe_host()}


def test_agent_uploads_a_run_and_resumes_without_duplicates(client: TestClient) -> None:
    sink = HttpSink("", TOKEN, "agent-cpu", client=client)
    sink.register_device(device_fields("agent-cpu"))
    items = model_plan(factories.residual_model(channels=16, size=16), "block",
                       [("prune50", parse_config({"default": {"prune_ratio": 0.5}}))])
    runner = ProfileRunner("agent-cpu", OnnxRuntimeBackend(1), sink, FAST)
    first = runner.run(items, budget_minutes=5)
    assert len(first.items_done) == 2
    stored = client.get("/api/devices/agent-cpu/measurements", params={"limit": 1000}).json()
    assert stored["count"] == sum(first.measured_per_op.values()) > 0
    second = runner.run(items, budget_minutes=5)
    assert second.items_skipped == 2 and not second.items_done
    assert client.get("/api/devices/agent-cpu/measurements").json()["count"] == stored["count"]
    runs = client.get("/api/devices/agent-cpu").json()["runs"]
    assert [run["status"] for run in runs] == ["finished", "finished"]


def test_agent_retries_server_errors_then_succeeds(client: TestClient) -> None:
    failures = {"left": 2}
    real_send = client.send

    def flaky_send(request: httpx.Request, **kwargs: object) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/measurements") and failures["left"]:
            failures["left"] -= 1
            return httpx.Response(503, json={"detail": "database unreachable"}, request=request)
        return real_send(request, **kwargs)

    client.send = flaky_send  # type: ignore[method-assign]
    sink = HttpSink("", TOKEN, "agent-cpu", client=client, backoff_s=0.01)
    sink.register_device(device_fields("agent-cpu"))
    runner = ProfileRunner("agent-cpu", OnnxRuntimeBackend(1), sink, FAST)
    report = runner.run(model_plan(factories.gemm_model(), "fc", []), budget_minutes=5)
    assert failures["left"] == 0
    assert client.get("/api/devices/agent-cpu/measurements").json()["count"] == sum(report.measured_per_op.values())


def test_agent_without_token_is_refused(client: TestClient) -> None:
    sink = HttpSink("", None, "agent-cpu", client=client)
    with pytest.raises(UploadError, match="401"):
        sink.register_device(device_fields("agent-cpu"))


def test_a_conflicting_registration_is_refused_and_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    sink = HttpSink("", TOKEN, "agent-cpu", client=client)
    sink.register_device(device_fields("agent-cpu"))
    sink.register_device(device_fields("agent-cpu"))  # the same device again: taken as it is
    with caplog.at_level(logging.ERROR, logger="profiler.sinks"), pytest.raises(UploadError) as raised:
        sink.register_device(device_fields("agent-cpu") | {"threads": 4})
    message = str(raised.value)
    assert message.startswith("registering device agent-cpu: the service refused it as a conflict")
    assert "threads" in message and "(HTTP 409)" in message
    assert [record.getMessage() for record in caplog.records] == [message.removesuffix(" (HTTP 409)")]


def test_an_unreachable_service_is_an_upload_error_after_retries(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    sink = HttpSink(url, TOKEN, "agent-cpu", retries=2, backoff_s=0.01)
    with pytest.raises(UploadError, match=rf"registering device agent-cpu: cannot reach {url}.*\(after 2 retries\)"):
        sink.register_device(device_fields("agent-cpu"))
    sink.close()
