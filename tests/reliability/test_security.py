"""Security properties of the service: constant-time token checks, models parsed but never run, bounded reads.

Writes needing a token (401) and the 413 status are covered in tests/service; here: the token check has
no early exit, no uploaded model is executed while it is uploaded, predicted or ranked, a streamed
upload is read no further than the limit, and the optimizer runs under time and memory limits.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from predictor.store import open_store
from service.api.model_store import open_model_store
from service.api.predictions import PredictionCache, answer_question
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN, fake_measurement, kept_models, local_device_body

DEVICE = "sec-cpu"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": tmp_path / "home", "database_url": f"sqlite:///{tmp_path / 'latpred.db'}",
                              "api_tokens": TOKEN, "read_token_required": False}
    return Settings(**(values | overrides))


def test_token_check_compares_every_token_in_constant_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hmac.compare_digest against each configured token, whether the offered one matches the first or none."""
    tokens = ["first-token", "second-token", "third-token"]
    calls: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real_compare(a, b)

    settings = make_settings(tmp_path, api_tokens=",".join(tokens))
    with TestClient(create_app(settings)) as client:
        monkeypatch.setattr("service.api.tokens.hmac.compare_digest", spy)
        for offered, expected_status in (("first-token", 201), ("first-tokeX", 401), ("nope", 401)):
            calls.clear()
            response = client.post("/api/devices", json=local_device_body(DEVICE),
                                   headers={"Authorization": f"Bearer {offered}"})
            assert response.status_code == expected_status
            assert sorted(b for _, b in calls) == sorted(t.encode() for t in tokens), "no early exit"
            assert all(a == offered.encode() for a, _ in calls)


@pytest.fixture
def forbid_model_execution(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Any onnxruntime inference call fails the test; creating a session (the optimizer) stays allowed."""
    from onnxruntime.capi import onnxruntime_inference_collection as collection

    executed: list[str] = []

    def refuse(name: str) -> Any:
        def run(*args: object, **kwargs: object) -> Any:
            executed.append(name)
            raise AssertionError(f"the service executed a model ({name})")
        return run

    for name in ("run", "run_with_iobinding", "run_with_ort_values", "run_with_ortvaluevector", "run_async"):
        if hasattr(collection.Session, name):
            monkeypatch.setattr(collection.Session, name, refuse(name))
    yield executed


@pytest.fixture
def measured_model(tmp_path: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Settings of a store with an uploaded model whose kernels are all measured on the device, and a question
    about it."""
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
        data = factories.residual_model(channels=8, size=8).SerializeToString()
        uploaded = client.post("/api/models", files={"file": ("m.onnx", data)}, headers=AUTH)
        assert uploaded.status_code == 201, uploaded.text
        model = uploaded.json()
        rows = [fake_measurement(kernel, 0.1) for kernel in model["kernels"]]
        assert client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "r", "measurements": rows},
                           headers=AUTH).status_code == 200
    yield settings, {"device": DEVICE, "model_id": model["id"]}


def ask(settings: Settings, kind: str, question: dict[str, Any]) -> dict[str, Any]:
    """A question answered as a prediction worker answers it (service.api.predictions), in this process, so the
    execution guard of the test sees everything it runs."""
    store = open_store(settings)
    try:
        # No optimizer limits: the runtime's optimizer runs here too, not in a worker the guard cannot see.
        return answer_question(kind, question, store, PredictionCache(open_model_store(settings)))
    finally:
        store.close()


def test_upload_parses_the_model_never_executes_it(forbid_model_execution: list[str], tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings)) as client:
        data = factories.residual_model(channels=8, size=8).SerializeToString()
        assert client.post("/api/models", files={"file": ("m.onnx", data)}, headers=AUTH).status_code == 201
    assert forbid_model_execution == []


def test_predictions_parse_the_model_never_execute_it(
        forbid_model_execution: list[str], measured_model: tuple[Settings, dict[str, str]]) -> None:
    """Predictions without int8: onnxruntime optimizes, it never runs the model."""
    settings, question = measured_model
    for config in (None, {"default": {"prune_ratio": 0.5}}, {"default": {"sparsity": 0.5, "bits": 16}},
                   {"default": {"bits": 4}}):
        assert ask(settings, "predict", {**question, "config": config})["latency_ms"] > 0
    assert forbid_model_execution == []


@pytest.mark.parametrize("kind", ["predict", "rank"])
def test_int8_questions_do_not_execute_the_model(
        forbid_model_execution: list[str], measured_model: tuple[Settings, dict[str, str]], kind: str) -> None:
    """int8 quantizes with synthesized activation ranges (predictor.compression.apply), never by calibration runs."""
    settings, question = measured_model
    int8 = {"default": {"bits": 8}}
    if kind == "predict":
        assert ask(settings, "predict", {**question, "config": int8})["latency_ms"] > 0
    else:
        ranked = ask(settings, "rank", {**question, "candidates": [{"name": "int8", "config": int8}]})
        assert ranked["ranked"][0]["latency_ms"] > 0
    assert forbid_model_execution == []


def test_the_execution_guard_catches_a_model_run(forbid_model_execution: list[str]) -> None:
    """The guard itself works: running a session is caught (else the tests above prove nothing)."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(factories.gemm_model().SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(AssertionError, match="executed a model"):
        session.run(None, {session.get_inputs()[0].name: np.zeros((1, 256), np.float32)})
    assert forbid_model_execution == ["run"]


async def _stream_upload(app: FastAPI, total_bytes: int, chunk_bytes: int,
                         declared_length: int | None) -> tuple[int, int]:
    """POST a multipart body of `total_bytes` in chunks (no Content-Length unless declared); (status, bytes read)."""
    boundary = b"latpredboundary"
    head = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="big.onnx"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n")
    headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {TOKEN}".encode()),
               (b"content-type", b"multipart/form-data; boundary=" + boundary)]
    if declared_length is not None:
        headers.append((b"content-length", str(declared_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/api/models", "raw_path": b"/api/models", "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    state = {"read": 0, "status": 0, "first": True}

    async def receive() -> dict[str, Any]:
        if state["read"] >= total_bytes:
            await asyncio.sleep(3600)  # the app asked past the end: it would hang, never happens on 413
        body = head if state["first"] else b"\x00" * chunk_bytes
        state["first"] = False
        state["read"] += len(body)
        return {"type": "http.request", "body": body, "more_body": state["read"] < total_bytes}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]

    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    return state["status"], state["read"]


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "declared-length"])
def test_streamed_upload_over_the_limit_is_read_no_further(tmp_path: Path, declared: bool) -> None:
    limit_mb = 0.25
    settings = make_settings(tmp_path, max_upload_mb=limit_mb)
    total, chunk = 64 * 2**20, 64 * 2**10
    app = create_app(settings)
    with TestClient(app):
        status, read = asyncio.run(_stream_upload(app, total, chunk, total if declared else None))
    assert status == 413
    if declared:
        assert read == 0, "a declared length over the limit is refused before the body is read"
    else:
        # The limit, the allowance for form overhead (64 KiB in service.api.uploads) and one chunk in flight.
        assert read <= limit_mb * 2**20 + 64 * 2**10 + 2 * chunk, f"read {read} bytes of {total}"
    assert kept_models(settings) == {}


def test_optimizer_time_limit_is_enforced(tmp_path: Path) -> None:
    """The optimizer runs in a worker killed at LATPRED_OPTIMIZE_TIMEOUT_S: 422 naming the limit, nothing stored."""
    settings = make_settings(tmp_path, optimize_timeout_s=1e-6)
    with TestClient(create_app(settings)) as client:
        data = factories.attention_model().SerializeToString()
        response = client.post("/api/models", files={"file": ("m.onnx", data)}, headers=AUTH)
        assert response.status_code == 422
        assert "time limit of 1e-06 s" in response.json()["detail"]
        assert client.get(f"/api/models/{hashlib.sha256(data).hexdigest()}").status_code == 404
    assert kept_models(settings) == {}


def test_optimizer_memory_limit_is_enforced(tmp_path: Path) -> None:
    """A model whose optimization needs more memory than LATPRED_OPTIMIZE_MEMORY_MB allows is refused (422)."""
    settings = make_settings(tmp_path, optimize_memory_mb=1)
    with TestClient(create_app(settings)) as client:
        data = factories.gemm_model(k=2048, n=2048).SerializeToString()  # a 16 MB weight
        response = client.post("/api/models", files={"file": ("m.onnx", data)}, headers=AUTH)
        assert response.status_code == 422, response.text
        assert "memory limit of 1 MB" in response.json()["detail"]
    with TestClient(create_app(make_settings(tmp_path))) as client:
        response = client.post("/api/models", files={"file": ("m.onnx", data)}, headers=AUTH)
        assert response.status_code == 201, response.text
