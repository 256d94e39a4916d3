"""Prediction workers (service.api.workers) as the app uses them: replaced when they die, gone at shutdown.

Deadlines, disconnects and the queue are probed through a real server in tests/reliability/test_served_probes.py.
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.workers import worker_settings
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import AUTH, DEVICE, fake_measurement, local_device_body


def _wait_gone(pid: int, timeout_s: float = 30.0) -> bool:
    """Wait until the process is gone from the process table (reaped: all its threads ended, its pipes closed)."""
    deadline = time.monotonic() + timeout_s
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def _ask(client: TestClient, model_id: str) -> Any:
    return client.post("/api/predict", json={"device": DEVICE, "model_id": model_id})


def test_a_worker_that_died_is_replaced_and_shutdown_stops_them(api_settings: Settings,
                                                                residual_bytes: bytes) -> None:
    with TestClient(create_app(api_settings)) as client:
        assert client.post("/api/devices", json=local_device_body(), headers=AUTH).status_code == 201
        model = client.post("/api/models", files={"file": ("m.onnx", residual_bytes)}, headers=AUTH).json()
        rows = [fake_measurement(kernel, 0.1) for kernel in model["kernels"]]
        client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "r", "measurements": rows}, headers=AUTH)
        first = _ask(client, model["id"])
        assert first.status_code == 200, first.text
        workers = client.app.state.predictions  # type: ignore[attr-defined]
        [pid] = workers.worker_pids()
        os.killpg(pid, signal.SIGKILL)  # the system killed it (out of memory), say
        assert _wait_gone(pid)
        again = _ask(client, model["id"])
        assert again.status_code == 200, again.text
        assert again.json()["latency_ms"] == first.json()["latency_ms"]
        [replacement] = workers.worker_pids()
        assert replacement != pid
    assert _wait_gone(replacement), "the app's shutdown stops its workers"


def test_worker_settings_hold_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker runs in a directory of its own: relative homes and SQLite paths are resolved for it."""
    monkeypatch.chdir(tmp_path)
    settings = worker_settings(Settings(home=Path("var"), database_url="", api_tokens="t"))
    assert settings.home == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'latpred.db'}"
    relative = worker_settings(Settings(home=Path("var"), database_url="sqlite:///data/x.db", api_tokens="t"))
    assert relative.database_url == f"sqlite:///{tmp_path / 'data' / 'x.db'}"
    postgres = "postgresql+psycopg://user:secret@db:5432/latpred"
    assert worker_settings(Settings(home=Path("var"), database_url=postgres, api_tokens="t")).database_url == postgres
