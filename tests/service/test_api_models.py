"""REST API: model uploads (content ids, size limit, atomic files, invalid ONNX) and reads."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from predictor.kernels import KernelKey
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN


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
    stored = api_settings.models_dir / f"{uploaded['id']}.onnx"
    assert stored.read_bytes() == residual_bytes
    assert sorted(p.name for p in api_settings.models_dir.iterdir()) == [stored.name], "no temp files left"
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
    assert [p.name for p in api_settings.models_dir.iterdir()] == [f"{response.json()['id']}.onnx"]


@pytest.mark.parametrize("garbage", [b"not an onnx model at all", b"", b"\x08\x07\x12\x04junk"])
def test_garbage_is_422_and_stores_nothing(api: TestClient, api_settings: Settings, garbage: bytes) -> None:
    response = upload(api, garbage)
    assert response.status_code == 422
    assert "ONNX" in response.json()["detail"] or "empty" in response.json()["detail"]
    assert not api_settings.models_dir.exists() or not list(api_settings.models_dir.iterdir())


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
        assert response.json() == {"detail": "upload exceeds 0.001 MB"}
        assert not settings.models_dir.exists() or not list(settings.models_dir.iterdir())
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
