"""Request limits (service.api.limits): what the middleware answers before a route reads a body.

Through the real server in tests/reliability/test_served_probes.py; here the exact counts an ASGI-level client
can see (how many body bytes the app read), the agreement between the middleware's token rule and the routes'
own dependencies, the rate limiter's arithmetic, and the settings' environment variables.
"""
from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from service.api.deps import require_read_token, require_write_token
from service.api.limits import OPEN_QUESTIONS, RequestRateLimiter, _token_action
from service.api.routes import devices, health, jobs, measurements, models, predict, runs
from service.app import create_app
from service.dashboard.routes import chart_router
from service.settings import Settings
from tests.service.conftest import AUTH, TOKEN

_ROUTERS = [devices.router, health.router, jobs.router, measurements.router, models.router, predict.router,
            runs.router, chart_router]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"home": tmp_path / "home", "database_url": f"sqlite:///{tmp_path / 'latpred.db'}",
                              "api_tokens": TOKEN, "read_token_required": False}
    return Settings(**(values | overrides))


def declared_access(route: APIRoute) -> str | None:
    calls, stack = set(), [route.dependant]
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    return "writing" if require_write_token in calls else "reading" if require_read_token in calls else None


@pytest.mark.parametrize("read_token_required", [False, True], ids=["open-reads", "token-reads"])
def test_the_middleware_asks_a_token_where_the_routes_do(read_token_required: bool) -> None:
    """Operations with a body: the middleware's rule is the route's own (it answers before the body is read).
    Operations without one: the middleware never asks a token of an open route (the route may ask one)."""
    routes = [route for router in _ROUTERS for route in router.routes if isinstance(route, APIRoute)]
    assert len(routes) > 15
    checked_bodies = 0
    for route in routes:
        path = "/api" + route.path.replace("{name}", "dev").replace("{run_id}", "r").replace(
            "{model_id}", "0" * 64).replace("{job_id}", "j").replace("{name:path}", "dev")
        declared = declared_access(route)
        if declared == "reading" and not read_token_required:
            declared = None
        for method in route.methods or ():
            action = _token_action(method, path, read_token_required)
            if method in ("POST", "PUT", "PATCH"):
                checked_bodies += 1
                assert action == declared, f"{method} {path}: middleware {action}, route {declared}"
            else:  # any configured token may read and write: only whether one is asked for matters
                assert action is None or declared is not None, f"{method} {path}: middleware {action}, route open"
    assert checked_bodies >= 7
    assert {path for path in OPEN_QUESTIONS} == {"/api/predict", "/api/rank"}


async def _post_streamed(app: FastAPI, path: str, total_bytes: int, chunk_bytes: int, declared: bool,
                         headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """POST `total_bytes` of JSON-ish body in chunks straight to the ASGI app; (status, body bytes it read)."""
    all_headers = [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers]
    if declared:
        all_headers.append((b"content-length", str(total_bytes).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": all_headers,
             "client": ("127.0.0.1", 50000), "server": ("testserver", 80)}
    state = {"read": 0, "status": 0}

    async def receive() -> dict[str, Any]:
        if state["read"] >= total_bytes:
            await asyncio.sleep(3600)  # asked past the end: it would hang, never happens on a refusal
        state["read"] += chunk_bytes
        return {"type": "http.request", "body": b" " * chunk_bytes, "more_body": state["read"] < total_bytes}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            state["status"] = message["status"]

    await asyncio.wait_for(app(scope, receive, send), timeout=60)
    return state["status"], state["read"]


@pytest.mark.parametrize("declared", [False, True], ids=["chunked", "declared-length"])
def test_a_json_body_over_the_limit_is_read_no_further(tmp_path: Path, declared: bool) -> None:
    settings = make_settings(tmp_path, max_body_mb=0.25)
    app = create_app(settings)
    total, chunk = 64 * 2**20, 64 * 2**10
    with TestClient(app):
        status, read = asyncio.run(_post_streamed(app, "/api/predict", total, chunk, declared, []))
    assert status == 413
    if declared:
        assert read == 0, "a declared length over the limit is refused before the body is read"
    else:
        assert read <= 0.25 * 2**20 + chunk, f"read {read} bytes of {total}"


@pytest.mark.parametrize("authorization", [None, b"Bearer wrong"], ids=["no-token", "wrong-token"])
def test_a_write_without_a_valid_token_reads_no_body(tmp_path: Path, authorization: bytes | None) -> None:
    app = create_app(make_settings(tmp_path))
    headers = [(b"authorization", authorization)] if authorization else []
    with TestClient(app):
        for path in ("/api/devices/dev/measurements", "/api/devices", "/api/models"):
            status, read = asyncio.run(_post_streamed(app, path, 64 * 2**20, 64 * 2**10, True, headers))
            assert (status, read) == (401, 0), path


def test_bodies_within_the_limit_reach_the_route(tmp_path: Path) -> None:
    """The body read by the middleware is handed over whole: a batch just under the limit is stored."""
    settings = make_settings(tmp_path, max_body_mb=0.05)
    with TestClient(create_app(settings)) as client:
        from tests.service.conftest import local_device_body
        assert client.post("/api/devices", json=local_device_body("d"), headers=AUTH).status_code == 201
        from tests.service.test_api_measurements import conv_key, row
        rows = [row(conv_key(channels)) for channels in range(8, 72)]
        response = client.post("/api/devices/d/measurements", json={"run_id": "r", "measurements": rows},
                               headers=AUTH)
        assert response.status_code == 200 and response.json()["inserted"] == len(rows)
        too_many = [row(conv_key(channels)) for channels in range(8, 200)]
        refused = client.post("/api/devices/d/measurements", json={"run_id": "r2", "measurements": too_many},
                              headers=AUTH)
        assert refused.status_code == 413
        assert refused.json()["detail"] == ("request body exceeds 0.05 MB (LATPRED_MAX_BODY_MB); send smaller "
                                            "batches")


def test_the_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RequestRateLimiter(per_minute=60)
    assert [limiter.retry_after_s("a", now=0.0) for _ in range(60)] == [0.0] * 60
    assert limiter.retry_after_s("a", now=0.0) == pytest.approx(1.0)
    assert limiter.retry_after_s("b", now=0.0) == 0.0, "each address has its own bucket"
    assert limiter.retry_after_s("a", now=1.0) == 0.0, "one request a second comes back"
    assert limiter.retry_after_s("a", now=1.5) == pytest.approx(0.5)
    assert limiter.retry_after_s("a", now=120.0) == 0.0


def test_the_rate_limiter_remembers_a_bounded_number_of_addresses() -> None:
    limiter = RequestRateLimiter(per_minute=1, max_clients=3)
    for address in ("a", "b", "c", "d"):
        assert limiter.retry_after_s(address, now=0.0) == 0.0
    assert limiter.retry_after_s("d", now=0.0) > 0
    assert len(limiter._buckets) == 3


def test_limits_are_read_from_latpred_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {"MAX_BODY_MB": "2.5", "MAX_MODEL_NODES": "1234", "MAX_MODEL_KERNELS_MB": "3", "MAX_RUN_REPORT_KB": "99",
              "PREDICT_TIMEOUT_S": "7", "PREDICT_WORKERS": "3", "PREDICT_QUEUE": "5",
              "ANONYMOUS_REQUESTS_PER_MINUTE": "42"}
    for name, value in values.items():
        monkeypatch.setenv(f"LATPRED_{name}", value)
    settings = Settings()
    assert (settings.max_body_mb, settings.max_model_nodes, settings.max_model_kernels_mb,
            settings.max_run_report_kb, settings.predict_timeout_s, settings.predict_workers,
            settings.predict_queue, settings.anonymous_requests_per_minute) == (2.5, 1234, 3, 99, 7, 3, 5, 42)
    monkeypatch.setenv("LATPRED_PREDICT_WORKERS", "0")
    with pytest.raises(ValueError, match="predict_workers"):
        Settings()


def test_every_limit_is_documented_with_its_default() -> None:
    """docs/security.md has a row per limit: its variable and its default."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line.split("|")[2].strip() for line in page.splitlines()
            if line.startswith("| `LATPRED_")}
    limits = ["max_body_mb", "max_upload_mb", "max_model_nodes", "max_model_kernels_mb", "optimize_timeout_s",
              "optimize_memory_mb", "predict_timeout_s", "predict_workers", "predict_queue",
              "anonymous_requests_per_minute", "max_run_report_kb"]
    for name in limits:
        default = Settings.model_fields[name].default
        assert f"LATPRED_{name.upper()}" in rows, name
        assert rows[f"LATPRED_{name.upper()}"].split()[0] == f"{default:g}", name
