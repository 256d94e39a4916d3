"""REST API: health, bearer-token auth, devices and profiling runs (SQLite and PostgreSQL)."""
from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from service.app import create_app
from service.settings import Settings
from tests.proxy import TcpProxy
from tests.service.conftest import AUTH, TOKEN, local_device_body


def test_health_reports_database_ok(api: TestClient) -> None:
    response = api.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


def test_openapi_docs_are_served(api: TestClient) -> None:
    """The document lists the versioned paths only (the /api aliases answer, undocumented), at both its paths."""
    assert api.get("/docs").status_code == 200
    paths = api.get("/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/health", "/api/v1/devices", "/api/v1/models", "/api/v1/predict", "/api/v1/rank"} <= set(paths)
    assert not [path for path in paths if not path.startswith("/api/v1/")]
    assert api.get("/api/openapi.json").json() == api.get("/api/v1/openapi.json").json()


def test_health_is_503_while_database_unreachable(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/latpred",
                        home=tmp_path, api_tokens=TOKEN)
    with TestClient(create_app(settings)) as client:
        response = client.get("/api/health")
        assert response.status_code == 503
        assert response.json()["status"] == "degraded"
        assert response.json()["database"].startswith("unreachable: ")
        devices = client.get("/api/devices")
        assert devices.status_code == 503
        assert "Traceback" not in devices.text
        assert "cannot connect to database" in devices.json()["detail"]


@pytest.mark.postgres
def test_health_recovers_when_database_comes_back(postgres_url: str, tmp_path: Path) -> None:
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    try:
        with TestClient(create_app(Settings(database_url=proxied, home=tmp_path, api_tokens=TOKEN))) as client:
            assert client.get("/api/health").status_code == 200
            proxy.cut()
            down = client.get("/api/health")
            assert down.status_code == 503
            assert down.json()["database"].startswith("unreachable: ")
            assert client.get("/api/devices").status_code == 503
            proxy.start()
            assert client.get("/api/health").json() == {"status": "ok", "database": "ok"}
            assert client.get("/api/devices").status_code == 200
    finally:
        proxy.cut()


def test_writes_need_a_valid_token(api: TestClient) -> None:
    body = local_device_body()
    missing = api.post("/api/devices", json=body)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = api.post("/api/devices", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert (wrong.json()["detail"], wrong.json()["code"]) == ("invalid token", "unauthorized")
    not_bearer = api.post("/api/devices", json=body, headers={"Authorization": f"Basic {TOKEN}"})
    assert not_bearer.status_code == 401
    assert api.get("/api/devices").json()["count"] == 0
    assert api.post("/api/devices", json=body, headers=AUTH).status_code == 201
    assert api.get("/api/devices").json()["count"] == 1


def test_any_configured_token_may_write(store_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=store_url, home=tmp_path, api_tokens=" first , second ")
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/devices", json=local_device_body(),
                               headers={"Authorization": "Bearer second"})
        assert response.status_code == 201


def test_writes_refused_when_no_tokens_configured(store_url: str, tmp_path: Path) -> None:
    with TestClient(create_app(Settings(database_url=store_url, home=tmp_path))) as client:
        response = client.post("/api/devices", json=local_device_body(), headers=AUTH)
        assert response.status_code == 401
        assert "LATPRED_API_TOKENS is not set" in response.json()["detail"]
        assert client.get("/api/devices").status_code == 200


def test_reads_need_a_token_when_configured(store_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=store_url, home=tmp_path, api_tokens=TOKEN, read_token_required=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/devices").status_code == 401
        assert client.get("/api/config-schema").status_code == 401
        assert client.get("/api/devices", headers=AUTH).status_code == 200
        assert client.get("/api/health").status_code == 200


def test_register_list_and_read_device(api: TestClient, device: str) -> None:
    listed = api.get("/api/devices").json()
    assert listed["count"] == 1
    assert listed["data"][0]["name"] == device
    detail = api.get(f"/api/devices/{device}").json()
    expected = local_device_body()
    assert {field: detail[field] for field in expected} == expected
    assert detail["measurement_count"] == 0
    assert detail["measurements"] == {}
    assert detail["regressors"] == {}
    assert detail["runs"] == []


def test_register_again_is_a_noop_and_another_runtime_a_conflict(api: TestClient, device: str) -> None:
    """A device is one runtime on one kind of host: the same registration again changes nothing (an agent's
    restart), another thread count or runtime version is a 409 naming what differs, never an overwrite."""
    assert api.post("/api/devices", json=local_device_body(), headers=AUTH).status_code == 201
    for change in ({"threads": 4}, {"runtime_version": "1.18.0"}):
        answer = api.post("/api/devices", json={**local_device_body(), **change}, headers=AUTH)
        assert answer.status_code == 409, answer.text
        assert next(iter(change)) in answer.json()["detail"] and "another name" in answer.json()["detail"]
    assert api.get(f"/api/devices/{device}").json()["threads"] == local_device_body()["threads"]
    assert api.get("/api/devices").json()["count"] == 1


@pytest.mark.parametrize("change", [{"threads": -1}, {"name": ""}, {"name": "a/b"}, {"backend": ""}, {"extra": 1}])
def test_register_rejects_bad_fields(api: TestClient, change: dict[str, object]) -> None:
    response = api.post("/api/devices", json={**local_device_body(), **change}, headers=AUTH)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], str)
    assert api.get("/api/devices").json()["count"] == 0


def test_unknown_device_is_404_naming_known_ones(api: TestClient, device: str) -> None:
    response = api.get("/api/devices/nope")
    assert response.status_code == 404
    assert response.json()["detail"] == f"unknown device 'nope'; known: '{device}'"
    assert response.json()["code"] == "unknown_device"


def test_runs_start_finish_and_show_on_device(api: TestClient, device: str) -> None:
    started = api.post(f"/api/devices/{device}/runs", json={"run_id": "run-1", "budget_minutes": 30},
                       headers=AUTH)
    assert started.status_code == 201
    assert started.json()["status"] == "running"
    again = api.post(f"/api/devices/{device}/runs", json={"run_id": "run-1"}, headers=AUTH)
    assert again.status_code == 201
    assert again.json()["started_at"] == started.json()["started_at"]
    report = {"kernels": 12, "flat_axes": {"Conv": ["sparsity"]}}
    finished = api.put(f"/api/devices/{device}/runs/run-1", json={"status": "finished", "report": report},
                       headers=AUTH)
    assert finished.status_code == 200
    assert finished.json()["finished_at"] is not None
    runs = api.get(f"/api/devices/{device}").json()["runs"]
    assert [(run["run_id"], run["status"], run["report"]) for run in runs] == [("run-1", "finished", report)]


def test_run_errors(api: TestClient, device: str) -> None:
    assert api.put(f"/api/devices/{device}/runs/none", json={"status": "finished"}, headers=AUTH).status_code == 404
    bad_status = api.put(f"/api/devices/{device}/runs/none", json={"status": "running"}, headers=AUTH)
    assert bad_status.status_code == 422
    assert api.post("/api/devices/nope/runs", json={"run_id": "r"}, headers=AUTH).status_code == 404
    other = {**local_device_body("other-device")}
    assert api.post("/api/devices", json=other, headers=AUTH).status_code == 201
    assert api.post(f"/api/devices/{device}/runs", json={"run_id": "shared"}, headers=AUTH).status_code == 201
    clash = api.post("/api/devices/other-device/runs", json={"run_id": "shared"}, headers=AUTH)
    assert clash.status_code == 409
    finish_elsewhere = api.put("/api/devices/other-device/runs/shared", json={"status": "killed"}, headers=AUTH)
    assert finish_elsewhere.status_code == 404
