"""REST API: model uploads (content ids, size limit, atomic files, invalid ONNX) and reads."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from predictor.kernels.keys import KernelKey
from predictor.store import (
    ModelBlob,
    create_store_engine,
    open_store,
    read_model_blob,
    save_stored_model,
    session_scope,
)
from service.api.model_store import open_model_store
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN, kept_models


def upload(api: TestClient, data: bytes, filename: str = "block.onnx", **form: str) -> Any:
    return api.post("/api/models", files={"file": (filename, data)}, data=form, headers=AUTH)


def test_upload_returns_id_inputs_and_kernels(api: TestClient, api_settings: Settings,
                                              uploaded: dict[str, Any], residual_bytes: bytes) -> None:
    assert uploaded["id"] == hashlib.sha256(residual_bytes).hexdigest()
    assert uploaded["name"] == "block.onnx"
    assert uploaded["size_bytes"] == len(residual_bytes)
    assert uploaded["inputs"] == {"input": [1, 32, 28, 28]}
    kernels = uploaded["kernels"]
    assert kernels, "the residual block runs at least one kernel"
    for kernel in kernels:
        assert KernelKey.from_dict(kernel["key"]).key_hash == kernel["key_hash"]
    # Extraction ran onnxruntime's optimizer: conv_a and relu_a are one fused kernel.
    fused = [kernel for kernel in kernels if kernel["nodes"] == ["conv_a", "relu_a"]]
    assert len(fused) == 1
    assert fused[0]["key"]["activation"] == "Relu"
    assert kept_models(api_settings) == {uploaded["id"]: residual_bytes}
    assert api.get(f"/api/models/{uploaded['id']}").json() == uploaded


def test_same_bytes_again_is_free(api: TestClient, uploaded: dict[str, Any], residual_bytes: bytes,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a re-upload must not parse the model again")

    monkeypatch.setattr("service.api.routes.models.load_model", must_not_parse)
    monkeypatch.setattr("service.api.routes.models.extract_kernels", must_not_parse)
    again = upload(api, residual_bytes, filename="renamed.onnx")
    assert again.status_code == 200
    assert again.json() == uploaded


def test_file_name_is_a_label_never_a_path(api: TestClient, api_settings: Settings, tmp_path: Path) -> None:
    data = factories.gemm_model().SerializeToString()
    response = upload(api, data, filename="../../escape.onnx")
    assert response.status_code == 201
    assert response.json()["name"] == "escape.onnx"
    assert not list(tmp_path.rglob("escape.onnx"))
    assert list(kept_models(api_settings)) == [response.json()["id"]]


@pytest.mark.parametrize("garbage", [b"not an onnx model at all", b"", b"\x08\x07\x12\x04junk"])
def test_garbage_is_422_and_stores_nothing(api: TestClient, api_settings: Settings, garbage: bytes) -> None:
    response = upload(api, garbage)
    assert response.status_code == 422
    assert "ONNX" in response.json()["detail"] or "empty" in response.json()["detail"]
    assert kept_models(api_settings) == {}


def test_symbolic_inputs_need_input_shapes(api: TestClient) -> None:
    data = factories.symbolic_batch_model().SerializeToString()
    missing = upload(api, data)
    assert missing.status_code == 422
    assert "input" in missing.json()["detail"]
    fixed = upload(api, data, input_shapes="input=4x16")
    assert fixed.status_code == 201, fixed.text
    assert fixed.json()["inputs"] == {"input": [4, 16]}
    bad_syntax = upload(api, factories.gemm_model(k=8).SerializeToString(), input_shapes="x")
    assert bad_syntax.status_code == 422
    assert "expected NAME=DxDxD" in bad_syntax.json()["detail"]


def test_same_bytes_with_other_input_shapes_are_another_model(api: TestClient) -> None:
    data = factories.symbolic_batch_model().SerializeToString()
    first = upload(api, data, input_shapes="input=4x16")
    other = upload(api, data, input_shapes="input=8x16")
    again = upload(api, data, input_shapes="input=4x16")
    assert (first.status_code, other.status_code, again.status_code) == (201, 201, 200)
    assert first.json()["id"] != other.json()["id"] == upload(api, data, input_shapes="input=8x16").json()["id"]
    assert again.json()["id"] == first.json()["id"]
    assert api.get(f"/api/models/{other.json()['id']}").json()["inputs"] == {"input": [8, 16]}
    assert api.get(f"/api/models/{first.json()['id']}").json()["inputs"] == {"input": [4, 16]}
    fixed = factories.gemm_model(k=8).SerializeToString()
    assert upload(api, fixed).json()["id"] == hashlib.sha256(fixed).hexdigest()


def test_upload_over_the_limit_is_413(store_url: str, tmp_path: Path, residual_bytes: bytes) -> None:
    settings = Settings(database_url=store_url, home=tmp_path, api_tokens=TOKEN, max_upload_mb=0.001)
    assert len(residual_bytes) > 0.001 * 1024 * 1024
    with TestClient(create_app(settings)) as client:
        response = upload(client, residual_bytes)
        assert response.status_code == 413
        assert (response.json()["detail"], response.json()["code"]) == ("upload exceeds 0.001 MB", "body_too_large")
        assert kept_models(settings) == {}
        model_id = hashlib.sha256(residual_bytes).hexdigest()
        assert client.get(f"/api/models/{model_id}").status_code == 404


def test_upload_errors(api: TestClient, residual_bytes: bytes) -> None:
    no_token = api.post("/api/models", files={"file": ("m.onnx", residual_bytes)})
    assert no_token.status_code == 401
    no_file = api.post("/api/models", files={"other": ("m.onnx", residual_bytes)}, headers=AUTH)
    assert no_file.status_code == 422
    assert "field 'file'" in no_file.json()["detail"]
    not_multipart = api.post("/api/models", content=residual_bytes, headers=AUTH)
    assert not_multipart.status_code == 422
    assert api.get(f"/api/models/{'0' * 64}").status_code == 404
    assert api.get("/api/models/not-a-sha").status_code == 422


def test_a_model_directory_every_replica_mounts(store_url: str, tmp_path: Path, residual_bytes: bytes) -> None:
    """LATPRED_MODEL_STORE as a directory: a file per model there (written whole), none in the store."""
    shared = tmp_path / "shared-models"
    settings = Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN, model_store=str(shared))
    with TestClient(create_app(settings)) as client:
        first = upload(client, residual_bytes)
        assert first.status_code == 201
        assert [path.name for path in shared.iterdir()] == [f"{first.json()['id']}.onnx"], "no temp files left"
        assert (shared / f"{first.json()['id']}.onnx").read_bytes() == residual_bytes
        (shared / f"{first.json()['id']}.onnx").unlink()
        assert upload(client, residual_bytes).status_code == 200  # the same bytes again: the file is back
        assert (shared / f"{first.json()['id']}.onnx").read_bytes() == residual_bytes
    assert kept_models(settings) == {}


def test_bytes_lost_from_the_store_come_back_with_the_same_upload(api: TestClient, api_settings: Settings,
                                                                   uploaded: dict[str, Any],
                                                                   residual_bytes: bytes) -> None:
    engine = create_store_engine(api_settings.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(delete(ModelBlob))
    engine.dispose()
    assert kept_models(api_settings) == {}
    assert upload(api, residual_bytes).status_code == 200
    assert kept_models(api_settings) == {uploaded["id"]: residual_bytes}


def test_files_an_earlier_version_wrote_are_read_and_moved_into_the_store(store_url: str, tmp_path: Path,
                                                                           residual_bytes: bytes) -> None:
    """Before 0004 a model's bytes were a file under LATPRED_HOME/models: it is still read, then kept in the store."""
    settings = Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN)
    model_id = hashlib.sha256(residual_bytes).hexdigest()
    store = open_store(settings)
    try:
        with session_scope(store.sessions) as session:
            save_stored_model(session, model_id=model_id, name="old.onnx", size_bytes=len(residual_bytes),
                              inputs={"input": [1, 32, 28, 28]}, kernels=[])
        settings.models_dir.mkdir(parents=True)
        (settings.models_dir / f"{model_id}.onnx").write_bytes(residual_bytes)
        models = open_model_store(settings)
        with store.sessions() as session:
            assert models.has(session, model_id)
            assert models.read(session, model_id) == residual_bytes
            assert read_model_blob(session, model_id) == residual_bytes
            assert models.read(session, "0" * 64) is None
    finally:
        store.close()
