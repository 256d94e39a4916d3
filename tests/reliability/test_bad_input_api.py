"""Bad input through the REST API that used to answer 500 (found by the fuzzers), on SQLite and PostgreSQL.

Numbers the database cannot store (integers past the column, offsets past 64 bits), NUL characters
(PostgreSQL text refuses them), NaN/infinity smuggled into kernel keys as bare JSON tokens, keys the
feature pipeline cannot use (which broke the dashboard and training for the whole device), and input
shapes that are negative, zero or past int64.
Each is a 4xx naming the problem, writes nothing, and leaves the device's pages working.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from predictor.kernels.keys import KernelKey
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN, local_device_body

DEVICE = "bad-input-cpu"


def conv_key() -> dict[str, Any]:
    return KernelKey(op_type="Conv", inputs=((1, 16, 28, 28),), outputs=((1, 32, 28, 28),), weight=(32, 16, 3, 3),
                     activation="Relu", attrs=(("kernel_shape", (3, 3)),)).to_dict()


@pytest.fixture
def api(store_url: str, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN, read_token_required=False)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
        yield client


def post_raw(api: TestClient, text: str) -> Any:
    return api.post(f"/api/devices/{DEVICE}/measurements", content=text,
                    headers={**AUTH, "Content-Type": "application/json"})


def batch_text(key_text: str) -> str:
    """A batch of one good row and one row whose key is the given JSON text (which may hold bare NaN tokens)."""
    good = json.dumps({"key": conv_key(), "median_ms": 0.5, "p10_ms": 0.4, "p90_ms": 0.6, "repeats": 10})
    bad = f'{{"key": {key_text}, "median_ms": 0.5, "p10_ms": 0.4, "p90_ms": 0.6, "repeats": 10}}'
    return f'{{"run_id": "bad-1", "measurements": [{good}, {bad}]}}'


def with_field(name: str, value_text: str) -> str:
    key = conv_key()
    key[name] = "__VALUE__"
    return json.dumps(key).replace('"__VALUE__"', value_text)


@pytest.mark.parametrize(
    ("key_text", "fragment"),
    [
        (with_field("bits", "1e400"), "measurements[1].key.bits: Input should be a valid integer"),
        (with_field("bits", str(2**70)), "measurements[1].key.bits: Input should be less than or equal to 64"),
        (with_field("bits", "4294967296"), "measurements[1].key.bits: Input should be less than or equal to 64"),
        (with_field("inputs", "[[1e400, 16, 28, 28]]"), "measurements[1].key.inputs[0][0]"),
        (with_field("attrs", '{"kernel_shape": [3, 3], "epsilon": NaN}'), "must be finite numbers, not NaN"),
        (with_field("attrs", '{"alpha": -Infinity}'), "must be finite numbers, not NaN or infinity"),
        (with_field("activation", '{"name": "Relu"}'), "key.activation: Input should be a valid string"),
        (with_field("activation", '["Relu"]'), "key.activation: Input should be a valid string"),
        (with_field("weight", f"[{2**1030}, 16, 3, 3]"), "measurements[1].key"),
        (with_field("attrs", '{"group": [1, 2]}'), "not a usable kernel key"),
    ],
    ids=["bits-inf", "bits-2^70", "bits-2^32", "dim-inf", "attr-nan", "attr-minus-inf", "activation-dict",
         "activation-list", "weight-dim-2^1030", "group-list"],
)
def test_unusable_kernel_keys_reject_the_batch(api: TestClient, key_text: str, fragment: str) -> None:
    response = post_raw(api, batch_text(key_text))
    assert response.status_code == 422, response.text
    assert "measurements[1].key" in response.json()["detail"]
    assert fragment in response.json()["detail"]
    detail = api.get(f"/api/devices/{DEVICE}")
    assert detail.status_code == 200 and detail.json()["measurement_count"] == 0
    assert api.get(f"/api/dashboard/devices/{DEVICE}/charts").status_code == 200
    assert api.get(f"/devices/{DEVICE}").status_code == 200


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"offset": 2**63}, "offset"), ({"offset": 2**31}, "offset"), ({"bits": 2**70}, "bits"),
     ({"limit": 2**64}, "limit")],
    ids=["offset-2^63", "offset-2^31", "bits-2^70", "limit-2^64"],
)
def test_query_numbers_past_the_database_are_422(api: TestClient, params: dict[str, int], fragment: str) -> None:
    response = api.get(f"/api/devices/{DEVICE}/measurements", params=params)
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"]


def test_device_threads_past_the_column_are_422(api: TestClient) -> None:
    response = api.post("/api/devices", json={**local_device_body("many-threads"), "threads": 2**40}, headers=AUTH)
    assert response.status_code == 422
    assert "threads" in response.json()["detail"]
    assert [d["name"] for d in api.get("/api/devices").json()["data"]] == [DEVICE]


@pytest.mark.parametrize(
    "request_args",
    [
        ("POST", "/api/devices", {"json": {**local_device_body("nul-host"), "host": "cpu\x00x"}, "headers": AUTH}),
        ("POST", f"/api/devices/{DEVICE}/measurements",
         {"json": {"run_id": "r", "measurements": [{"key": {**conv_key(), "op_type": "Co\x00nv"}, "median_ms": 1,
                                                     "p10_ms": 1, "p90_ms": 1, "repeats": 1}]}, "headers": AUTH}),
        ("PUT", f"/api/devices/{DEVICE}/runs/r1", {"json": {"status": "finished", "report": {"note": "a\x00b"}},
                                                     "headers": AUTH}),
        ("GET", f"/api/devices/{DEVICE}/measurements", {"params": {"op_type": "Conv\x00"}}),
        ("GET", "/api/devices/x%00y", {}),
        ("POST", "/api/predict", {"json": {"device": "x\x00y", "model_id": "0" * 64}}),
    ],
    ids=["host", "key-op-type", "run-report", "query-op-type", "path-device", "predict-device"],
)
def test_nul_characters_are_never_a_server_error(api: TestClient, request_args: tuple[str, str, dict[str, Any]]
                                                 ) -> None:
    """PostgreSQL refuses NUL in text: 422 there; SQLite stores or looks it up. Never a 5xx, nothing partial."""
    assert api.post(f"/api/devices/{DEVICE}/runs", json={"run_id": "r1"}, headers=AUTH).status_code == 201
    method, url, kwargs = request_args
    response = api.request(method, url, **kwargs)
    assert response.status_code < 500, response.text
    if response.status_code == 422:
        assert response.json()["detail"]
    assert api.get("/api/health").status_code == 200


@pytest.mark.parametrize("dims", [[-5, 16], [0, 16], [2**40, 16], [2**63, 16], [2**70, 16]],
                         ids=["negative", "zero", "2^40", "2^63", "2^70"])
def test_symbolic_model_with_absurd_input_shapes_is_422(api: TestClient, dims: list[int]) -> None:
    """Shapes fixed at upload or per question: positive and below 2^31, else 422 naming the input (never 200/500)."""
    data = factories.symbolic_batch_model().SerializeToString()
    upload = api.post("/api/models", files={"file": ("dyn.onnx", data)},
                      data={"input_shapes": f"input={dims[0]}x{dims[1]}"}, headers=AUTH)
    assert upload.status_code == 422, upload.text
    assert "input" in upload.json()["detail"]
    fixed = api.post("/api/models", files={"file": ("dyn.onnx", data)}, data={"input_shapes": "input=4x16"},
                     headers=AUTH)
    assert fixed.status_code == 201, fixed.text
    rows = [{"key": kernel["key"], "median_ms": 0.1, "p10_ms": 0.1, "p90_ms": 0.1, "repeats": 5}
            for kernel in fixed.json()["kernels"]]
    assert api.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "m", "measurements": rows},
                    headers=AUTH).status_code == 200
    question = {"device": DEVICE, "model_id": fixed.json()["id"], "input_shapes": {"input": dims}}
    predicted = api.post("/api/predict", json=question)
    assert predicted.status_code == 422, predicted.text
    assert "dim 0 must be an integer in [1, 2147483647]" in predicted.json()["detail"]
    ranked = api.post("/api/rank", json={**question, "candidates": [{"name": "a", "config": {}}]})
    assert ranked.status_code == 422, ranked.text
