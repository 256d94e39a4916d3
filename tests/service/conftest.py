"""Fixtures of the REST API tests: an app on a fresh store (SQLite and PostgreSQL), a token, a model."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.store import ModelBlob, create_store_engine
from service.app import create_app
from service.settings import Settings
from tests import factories

TOKEN = "t0k3n"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEVICE = "ci-cpu-1t"


@pytest.fixture
def api_settings(store_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN)


@pytest.fixture
def api(api_settings: Settings) -> Iterator[TestClient]:
    """A client of an app on an empty store (the lifespan runs: store opened, caches created)."""
    with TestClient(create_app(api_settings)) as client:
        yield client


def local_device_body(name: str = DEVICE) -> dict[str, Any]:
    runtime = local_runtime(1)
    return {
        "name": name,
        "backend": runtime.backend,
        "execution_provider": runtime.execution_provider,
        "runtime_version": runtime.runtime_version,
        "threads": runtime.threads,
        "host": describe_host(),
    }


@pytest.fixture
def device(api: TestClient) -> str:
    """A device with this machine's onnxruntime, 1 thread."""
    response = api.post("/api/devices", json=local_device_body(), headers=AUTH)
    assert response.status_code == 201, response.text
    return DEVICE


@pytest.fixture(scope="session")
def residual_bytes() -> bytes:
    return factories.residual_model().SerializeToString()


@pytest.fixture
def uploaded(api: TestClient, residual_bytes: bytes) -> dict[str, Any]:
    """The residual block uploaded: {"id", "name", "size_bytes", "inputs", "kernels"}."""
    response = api.post("/api/models", files={"file": ("block.onnx", residual_bytes)}, headers=AUTH)
    assert response.status_code == 201, response.text
    return dict(response.json())


def fake_measurement(kernel: dict[str, Any], median_ms: float) -> dict[str, Any]:
    """A plausible measurement of an uploaded model's kernel (percentiles around the median)."""
    return {"key": kernel["key"], "median_ms": median_ms, "p10_ms": median_ms * 0.9,
            "p90_ms": median_ms * 1.2, "repeats": 50}


def save_model(path: Path, model: onnx.ModelProto) -> Path:
    onnx.save(model, path)
    return path


def kept_models(settings: Settings) -> dict[str, bytes]:
    """The bytes of uploaded models the server keeps, by id: in the store, where every process reads them.

    Nothing is kept on this replica's disk (LATPRED_HOME/models stays absent).
    """
    assert not settings.models_dir.exists(), "a model file was written to this replica's disk"
    engine = create_store_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            return {model_id: bytes(data) for model_id, data in connection.execute(
                select(ModelBlob.model_id, ModelBlob.data).order_by(ModelBlob.model_id))}
    finally:
        engine.dispose()


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh LATPRED_HOME for `latpred` runs, none of the variables that stand in for its options set."""
    for name in ("LATPRED_DATABASE_URL", "LATPRED_DEVICE", "LATPRED_TOKEN", "LATPRED_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LATPRED_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def residual_file(tmp_path: Path) -> Path:
    """The residual block saved as block.onnx."""
    return save_model(tmp_path / "block.onnx", factories.residual_model())
