"""Fuzzing the REST API from its own OpenAPI schema: no input may make the service answer 5xx.

Schemathesis generates valid and invalid requests for every JSON operation (the multipart model upload
and the training job are left out: the first is fuzzed in test_fuzz_onnx.py, the second starts LightGBM
in the background per example). The app runs in-process on a fresh SQLite store seeded with a device,
a measured model and a run, so generated requests can also reach the code behind the 404s.
The same operations run again against low limits (body size, request rate without a token, report size, model
nodes), with and without a token: the limits answer 401, 413 and 429, never 5xx, as documented.
Two hypothesis tests go deeper than the schema can: compression configs of plausible and absurd values
against the measured model, and kernel keys with fields replaced by arbitrary JSON (NaN included).
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.conftest import AUTH, TOKEN, fake_measurement, local_device_body

DEVICE = "fuzz-cpu"
EXAMPLES_PER_OPERATION = 25
# Per example; generous because the suite shares two cores, yet a hang fails fast.
DEADLINE = timedelta(seconds=10)
# Left out of the schema-driven fuzzing (see the module docstring).
EXCLUDED = (("POST", "/api/v1/models"), ("POST", "/api/v1/devices/{name}/train"))


@pytest.fixture(scope="module")
def fuzz_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("fuzz-api") / "home"
    # Explicit store and read access, whatever LATPRED_* variables the environment has.
    return Settings(home=home, database_url=f"sqlite:///{home / 'latpred.db'}", api_tokens=TOKEN,
                    read_token_required=False)


@pytest.fixture(scope="module")
def seeded(fuzz_settings: Settings) -> dict[str, Any]:
    """The app with a device, a model whose kernels are all measured, and a run; plus their names."""
    app = create_app(fuzz_settings)
    # The TestClient's lifespan ends before schemathesis starts its own on the same app object.
    with TestClient(app) as client:
        assert client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
        data = factories.residual_model().SerializeToString()
        uploaded = client.post("/api/models", files={"file": ("block.onnx", data)}, headers=AUTH)
        assert uploaded.status_code == 201, uploaded.text
        model = uploaded.json()
        rows = [fake_measurement(kernel, 0.1 + 0.01 * i) for i, kernel in enumerate(model["kernels"])]
        batch = client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "seed", "measurements": rows},
                            headers=AUTH)
        assert batch.status_code == 200, batch.text
        assert client.post(f"/api/devices/{DEVICE}/runs", json={"run_id": "seed"}, headers=AUTH).status_code == 201
        # Warm the prepared model and its fast config path, so no fuzzed example pays for building them.
        question = {"device": DEVICE, "model_id": model["id"]}
        assert client.post("/api/predict", json=question).status_code == 200
        ranked = client.post("/api/rank", json={**question, "candidates": [{"name": "int8",
                                                                            "config": {"default": {"bits": 8}}}]})
        assert ranked.status_code == 200, ranked.text
        node_names = sorted({node for kernel in model["kernels"] for node in kernel["nodes"]})
    return {"app": app, "model_id": model["id"], "nodes": node_names, "key": model["kernels"][0]["key"]}


def _json_operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every documented operation but the excluded ones; building the schema needs no store."""
    document = create_app(Settings(home=Path("unused"), database_url="sqlite://", api_tokens=TOKEN)).openapi()
    operations = [(method.upper(), path) for path, methods in document["paths"].items() for method in methods]
    return sorted(op for op in operations if op not in EXCLUDED)


@pytest.fixture(scope="module")
def api_schema(seeded: dict[str, Any]) -> Iterator[Any]:
    yield schemathesis.openapi.from_asgi("/api/v1/openapi.json", seeded["app"])
    # Schemathesis keeps the app's lifespan running until exit; end it here (store closed, job pool stopped).
    shutdown = getattr(schemathesis_asgi, "shutdown_lifespans", None)
    if shutdown is not None:
        shutdown()


def _aim_at_seeded_entities(case: Any, seeded: dict[str, Any]) -> None:
    """Point path parameters and body references at the seeded device, model and run."""
    known = {"name": DEVICE, "device": DEVICE, "model_id": seeded["model_id"], "run_id": "seed"}
    parameters = case.path_parameters or {}
    for name in parameters:
        if name in known:
            parameters[name] = known[name]
    if isinstance(case.body, dict):
        for name in ("device", "model_id", "run_id"):
            if name in case.body:
                case.body[name] = known[name]
        # A generated measurement is almost never a possible one (the schema bounds sizes, names and percentiles
        # more tightly than generation follows): aimed uploads carry a real key and ordered percentiles, so they
        # reach the store.
        for row in case.body.get("measurements") or []:
            if isinstance(row, dict):
                row.update(key=seeded["key"], p10_ms=0.9, median_ms=1.0, p90_ms=1.2)


# Each operation is its own test (schemathesis.pytest.from_fixture does not support pytest 9 yet).
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path"), _json_operations(), ids=lambda value: str(value))
def test_no_server_error_and_documented_responses(api_schema: Any, seeded: dict[str, Any], method: str,
                                                  path: str) -> None:
    """Any generated request, at random or at the seeded entities: never 5xx; bodies match the documentation."""
    operation = api_schema[path][method]
    statuses: list[int] = []

    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, aimed=st.booleans())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=DEADLINE, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any, aimed: bool) -> None:
        if aimed:
            _aim_at_seeded_entities(case, seeded)
        response = case.call_and_validate(
            headers=AUTH, checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
        statuses.append(response.status_code)

    check()
    if path != "/api/v1/jobs/{job_id}":  # no job was queued for the examples to find
        assert any(200 <= status < 300 for status in statuses), f"no example got past the 4xx: {statuses}"


# --- the same operations under limits low enough for generated requests to meet them ----------------------------

LIMITED_EXAMPLES_PER_OPERATION = 10
LIMITED_RATE_PER_MINUTE = 30
LIMITED_BODY_MB = 0.0005  # 524 bytes: a question fits, a batch of a few measurements does not


@pytest.fixture(scope="module")
def limited_app(fuzz_settings: Settings, seeded: dict[str, Any]) -> FastAPI:
    """An app on the seeded store with a 524-byte body limit, 30 requests a minute without a token, 1 KB reports
    and 50 nodes per model."""
    return create_app(fuzz_settings.model_copy(update={
        "max_body_mb": LIMITED_BODY_MB, "anonymous_requests_per_minute": LIMITED_RATE_PER_MINUTE,
        "max_run_report_kb": 1.0, "max_model_nodes": 50}))


@pytest.fixture(scope="module")
def limited_schema(limited_app: FastAPI) -> Any:
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", limited_app)


@pytest.fixture(scope="module")
def limited_statuses() -> dict[str, list[int]]:
    """Statuses of the limited run, per operation (filled by the parametrized test, checked after it)."""
    return {}


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("method", "path"), _json_operations(), ids=lambda value: str(value))
def test_limits_never_make_a_server_error(limited_schema: Any, seeded: dict[str, Any],
                                          limited_statuses: dict[str, list[int]], method: str, path: str) -> None:
    """Generated requests with and without a token against low limits: 401, 413, 429 where due, never 5xx, and
    every answer matches the documentation."""
    operation = limited_schema[path][method]
    statuses = limited_statuses.setdefault(f"{method} {path}", [])
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases, aimed=st.booleans(), token=st.booleans())
    @settings(max_examples=LIMITED_EXAMPLES_PER_OPERATION, deadline=DEADLINE, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case: Any, aimed: bool, token: bool) -> None:
        if aimed:
            _aim_at_seeded_entities(case, seeded)
        response = case.call_and_validate(
            headers=AUTH if token else {},
            checks=[not_a_server_error, response_schema_conformance, content_type_conformance])
        statuses.append(response.status_code)
        if response.status_code in (401, 413, 429):
            assert response.json()["detail"], response.text

    check()


def test_the_limited_run_met_every_limit(limited_statuses: dict[str, list[int]]) -> None:
    """The run above is not vacuous: writes were refused without a token, bodies for size, clients for rate."""
    seen = {status for statuses in limited_statuses.values() for status in statuses}
    assert {401, 413, 429} <= seen, sorted(seen)
    assert any(200 <= status < 300 for status in seen), "some requests got through the limits"


@pytest.fixture(scope="module")
def client(fuzz_settings: Settings, seeded: dict[str, Any]) -> Iterator[TestClient]:
    """A second app on the seeded store (the first one's state belongs to schemathesis' lifespan)."""
    with TestClient(create_app(fuzz_settings)) as test_client:
        yield test_client


_ratios = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 0.3, 0.5, 0.9, 0.99]),
                    st.integers(-5, 5), st.text(max_size=3), st.none())
_layer = st.fixed_dictionaries({}, optional={
    "bits": st.one_of(st.sampled_from([32, 16, 8, 4]), st.integers(-1, 64), st.text(max_size=2)),
    "sparsity": _ratios,
    "sparsity_pattern": st.sampled_from(["unstructured", "2:4", "4:8", ""]),
    "prune_ratio": _ratios,
    "round_to": st.one_of(st.integers(-2, 300), st.none()),
})


def _configs(nodes: list[str]) -> st.SearchStrategy[Any]:
    patterns = st.one_of(st.sampled_from(nodes), st.sampled_from(["*", "conv_*", "nothing*", "[", "**"]),
                         st.text(max_size=6))
    return st.one_of(
        st.fixed_dictionaries({}, optional={"default": _layer,
                                            "layers": st.dictionaries(patterns, _layer, max_size=3)}),
        st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        st.lists(st.integers(), max_size=2),
    )


def test_predict_and_rank_with_fuzzed_configs_on_a_measured_model(client: TestClient,
                                                                   seeded: dict[str, Any]) -> None:
    """Configs made of plausible and absurd values reach compression and estimation: 200 or 422, never 5xx."""
    nodes: list[str] = seeded["nodes"]

    statuses: list[int] = []

    @given(config=_configs(nodes), other=_configs(nodes))
    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def check(config: Any, other: Any) -> None:
        body = {"device": DEVICE, "model_id": seeded["model_id"], "config": config}
        predicted = client.post("/api/predict", json=body)
        assert predicted.status_code in (200, 422), predicted.text
        statuses.append(predicted.status_code)
        if predicted.status_code == 200:
            assert predicted.json()["latency_ms"] > 0
        else:
            assert predicted.json()["detail"]
        ranked = client.post("/api/rank", json={"device": DEVICE, "model_id": seeded["model_id"],
                                                "candidates": [{"name": "a", "config": config},
                                                               {"name": "b", "config": other}]})
        assert ranked.status_code in (200, 422), ranked.text

    check()
    assert {200, 422} <= set(statuses), "the strategy must produce both valid and invalid configs"



_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)
# Values a profiler could send for each field, so that fuzzed keys are not all refused by the schema.
_PLAUSIBLE: dict[str, list[Any]] = {
    "op_type": ["Gemm", "NchwcConv", "QLinearConv"], "inputs": [[[1, 8]], [[1, 16, 28, 28], None]],
    "outputs": [[[1, 8]], [None]], "weight": [None, [16, 16, 1, 1]], "activation": [None, "Clip"],
    "attrs": [{}, {"group": 2}, {"pads": [0, 0, 0, 0]}], "dtype": ["int8", "float16", "17"], "bits": [4, 16],
    "sparsity": [0, 0.5], "sparsity_pattern": ["unstructured", "2:4"],
}
_KEY_FIELDS = sorted(_PLAUSIBLE)
_replacements = st.lists(
    st.sampled_from(_KEY_FIELDS).flatmap(
        lambda name: st.tuples(st.just(name), st.one_of(st.sampled_from(_PLAUSIBLE[name]), _json_values))),
    min_size=1, max_size=3).map(dict)


def test_measurement_keys_with_fuzzed_fields_never_break_the_device(client: TestClient) -> None:
    """A valid key with fields replaced by arbitrary JSON: 200 or 422; stored rows keep the device usable."""
    device = "fuzz-keys"
    assert client.post("/api/devices", json=local_device_body(device), headers=AUTH).status_code == 201
    base = {"op_type": "Conv", "inputs": [[1, 16, 28, 28]], "outputs": [[1, 32, 28, 28]], "weight": [32, 16, 3, 3],
            "activation": "Relu", "attrs": {"kernel_shape": [3, 3], "group": 1}, "bits": 8}
    statuses: list[int] = []

    @given(replacements=_replacements, serial=st.integers(0, 10**9))
    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(replacements: dict[str, Any], serial: int) -> None:
        row = {"key": {**base, **replacements}, "median_ms": 0.5, "p10_ms": 0.4, "p90_ms": 0.6, "repeats": 5}
        # json.dumps writes NaN/Infinity as bare tokens, as a careless client would; httpx's json= refuses them.
        body = json.dumps({"run_id": f"fuzz-{serial}", "measurements": [row]})
        response = client.post(f"/api/devices/{device}/measurements", content=body,
                               headers={**AUTH, "Content-Type": "application/json"})
        assert response.status_code in (200, 422), response.text
        statuses.append(response.status_code)

    check()
    assert {200, 422} <= set(statuses)
    assert client.get(f"/api/devices/{device}").status_code == 200
    assert client.get(f"/api/devices/{device}/measurements", params={"limit": 1000}).status_code == 200
    assert client.get(f"/api/devices/{device}/measurements", params={"format": "csv"}).status_code == 200
    assert client.get(f"/api/dashboard/devices/{device}/charts").status_code == 200
    assert client.get(f"/devices/{device}").status_code == 200
