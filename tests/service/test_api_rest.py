"""The REST API's contract (docs/rest.md): versioned paths with the /api aliases, problem+json errors with a code for
each family, and the OpenAPI document's schemas (SQLite and PostgreSQL stores, the real app)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from predictor.kernels.keys import KernelKey
from service.api.problems import PROBLEM_MEDIA_TYPE, ProblemCode, problem_type
from service.api.schemas import MAX_LISTED_CONFLICTS
from service.app import create_app
from service.settings import Settings
from tests.reliability.hostile_models import conv_chain
from tests.service.conftest import AUTH, TOKEN, fake_measurement, local_device_body

PROBLEM_MEMBERS = {"type", "title", "status", "detail", "code", "instance"}
REST_DOC = Path(__file__).resolve().parents[2] / "docs" / "rest.md"


def assert_problem(response: httpx.Response, status: int, code: str, detail_fragment: str = "") -> dict[str, Any]:
    """The answer is problem+json of this status and code, naming the request's path; returns the document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_MEDIA_TYPE
    problem: dict[str, Any] = response.json()
    assert PROBLEM_MEMBERS <= set(problem), problem
    assert (problem["status"], problem["code"]) == (status, code), problem
    assert problem["type"] == problem_type(ProblemCode(code))
    assert problem["instance"] == response.request.url.path
    assert isinstance(problem["detail"], str) and detail_fragment in problem["detail"], problem
    assert problem["title"] and "\n" not in problem["detail"]
    return problem


def measure_all(api: TestClient, device: str, model: dict[str, Any], prefix: str = "/api/v1") -> None:
    rows = [fake_measurement(kernel, 0.1 + 0.01 * index) for index, kernel in enumerate(model["kernels"])]
    answer = api.post(f"{prefix}/devices/{device}/measurements", json={"run_id": "r1", "measurements": rows},
                      headers=AUTH)
    assert answer.status_code == 200, answer.text


# --- versions ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/api/v1", "/api"])
def test_both_prefixes_answer_every_kind_of_route(api: TestClient, prefix: str, residual_bytes: bytes) -> None:
    """Writes through one prefix are read through the other: the same handlers on one store."""
    other = "/api" if prefix == "/api/v1" else "/api/v1"
    assert api.get(f"{prefix}/health").json() == {"status": "ok", "database": "ok"}
    assert api.post(f"{prefix}/devices", json=local_device_body("dev"), headers=AUTH).status_code == 201
    assert [d["name"] for d in api.get(f"{other}/devices").json()["data"]] == ["dev"]
    model = api.post(f"{prefix}/models", files={"file": ("block.onnx", residual_bytes)}, headers=AUTH).json()
    assert api.get(f"{other}/models/{model['id']}").json()["kernels"] == model["kernels"]
    measure_all(api, "dev", model, prefix)
    question = {"device": "dev", "model_id": model["id"], "config": {"default": {"bits": 16}}}
    here, there = api.post(f"{prefix}/predict", json=question), api.post(f"{other}/predict", json=question)
    assert here.status_code == 200, here.text
    assert here.json() == there.json()
    assert here.json()["config"] == {"default": {"bits": 16}, "layers": {}}
    ranked = api.post(f"{prefix}/rank", json={"device": "dev", "model_id": model["id"],
                                              "candidates": [{"name": "fp32"}, {"name": "fp16", "config": question[
                                                  "config"]}]})
    assert ranked.status_code == 200, ranked.text
    assert {row["name"] for row in ranked.json()["ranked"]} == {"fp32", "fp16"}
    assert api.get(f"{prefix}/devices/dev/measurements").json()["count"] == len(model["kernels"])
    assert api.get(f"{prefix}/dashboard/devices/dev/charts").status_code == 200
    assert {"default", "layers"} <= set(api.get(f"{prefix}/config-schema").json()["properties"])


@pytest.mark.parametrize("prefix", ["/api/v1", "/api"])
def test_request_limits_hold_under_both_prefixes(tmp_path: Path, prefix: str) -> None:
    """Tokens, rates and body sizes are ruled once for both spellings of a path."""
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'latpred.db'}", api_tokens=TOKEN,
                        read_token_required=False, anonymous_requests_per_minute=3, max_body_mb=0.001)
    with TestClient(create_app(settings)) as client:
        unauthorized = client.post(f"{prefix}/devices", json=local_device_body())
        assert_problem(unauthorized, 401, "unauthorized", "needs an 'Authorization: Bearer <token>' header")
        assert unauthorized.headers["www-authenticate"] == "Bearer"
        too_large = client.post(f"{prefix}/devices/d/measurements", content=b" " * 2000, headers=AUTH)
        assert_problem(too_large, 413, "body_too_large", "request body exceeds 0.001 MB (LATPRED_MAX_BODY_MB)")
        # A question is a read: open without a token (answered 404 by the route, not 401 by the middleware).
        question = client.post(f"{prefix}/predict", json={"device": "nope", "model_id": "0" * 64})
        assert_problem(question, 404, "unknown_device")
        statuses = [client.get(f"{prefix}/devices").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = client.get(f"{prefix}/devices")
        assert_problem(limited, 429, "rate_limited", "at most 3 a minute")
        assert int(limited.headers["retry-after"]) >= 1
        assert client.get(f"{prefix}/health").status_code == 200, "health checks are not counted"


# --- problem+json, by family ------------------------------------------------------------------------------------------


def test_http_exceptions_are_problems(api: TestClient, device: str) -> None:
    assert_problem(api.get("/api/v1/jobs/no-such-job"), 404, "unknown_job", "unknown job 'no-such-job'")
    assert_problem(api.get(f"/api/v1/models/{'f' * 64}"), 404, "unknown_model")
    assert_problem(api.put(f"/api/v1/devices/{device}/runs/nope", json={"status": "finished"}, headers=AUTH), 404,
                   "unknown_run", "unknown run 'nope'")
    assert_problem(api.get("/api/v1/no/such/route"), 404, "not_found")
    assert_problem(api.delete("/api/v1/devices", headers=AUTH), 405, "method_not_allowed")
    assert_problem(api.post("/api/v1/devices", json=local_device_body(), headers={"Authorization": "Bearer nope"}),
                   401, "unauthorized", "invalid token")


def test_validation_errors_list_their_fields(api: TestClient) -> None:
    body = {**local_device_body(), "threads": -1, "name": ""}
    problem = assert_problem(api.post("/api/v1/devices", json=body, headers=AUTH), 422, "validation_error")
    assert {tuple(error["loc"]) for error in problem["errors"]} == {("body", "threads"), ("body", "name")}
    assert all(error["msg"] and error["type"] for error in problem["errors"])
    assert "threads: Input should be greater than or equal to 0" in problem["detail"]
    not_json = api.post("/api/v1/devices", content=b"{", headers={**AUTH, "Content-Type": "application/json"})
    assert assert_problem(not_json, 422, "validation_error")["errors"][0]["type"] == "json_invalid"


def test_bad_configs_are_invalid_config_whoever_finds_them(api: TestClient, device: str,
                                                           uploaded: dict[str, Any]) -> None:
    """The request's schema (parse_config) and the library (a pattern no node matches) answer the same code."""
    question = {"device": device, "model_id": uploaded["id"]}
    by_schema = api.post("/api/v1/predict", json={**question, "config": {"default": {"bits": 7}}})
    problem = assert_problem(by_schema, 422, "invalid_config", "config: invalid compression config at default.bits")
    assert [error["loc"] for error in problem["errors"]] == [["body", "config"]]
    candidates = [{"name": "ok"}, {"name": "bad", "config": {"colour": "red"}}]
    assert_problem(api.post("/api/v1/rank", json={**question, "candidates": candidates}), 422, "invalid_config",
                   "candidates[1].config: invalid compression config at colour")
    measure_all(api, device, uploaded)
    by_library = api.post("/api/v1/predict", json={**question, "config": {"layers": {"nope*": {"bits": 8}}}})
    assert "errors" not in assert_problem(by_library, 422, "invalid_config", "matches no node of the model")


def test_library_errors_are_problems_by_class(api: TestClient, device: str, uploaded: dict[str, Any]) -> None:
    question = {"device": device, "model_id": uploaded["id"]}
    assert_problem(api.post("/api/v1/predict", json=question), 409, "no_measurements", "no measurements")
    assert_problem(api.post("/api/v1/predict", json={**question, "device": "nope"}), 404, "unknown_device",
                   f"unknown device 'nope'; known: '{device}'")
    assert_problem(api.get("/api/v1/devices/nope"), 404, "unknown_device")
    other_threads = {**local_device_body(), "threads": 3}
    assert_problem(api.post("/api/v1/devices", json=other_threads, headers=AUTH), 409, "device_conflict")
    garbage = api.post("/api/v1/models", files={"file": ("x.onnx", b"not a model")}, headers=AUTH)
    assert_problem(garbage, 422, "invalid_model")
    no_file = api.post("/api/v1/models", files={"other": ("x.onnx", b"x")}, headers=AUTH)
    assert_problem(no_file, 422, "invalid_upload", "the form has no file in the field 'file'")


def test_run_conflicts_are_problems(api: TestClient, device: str) -> None:
    assert api.post(f"/api/v1/devices/{device}/runs", json={"run_id": "done"}, headers=AUTH).status_code == 201
    finished = api.put(f"/api/v1/devices/{device}/runs/done", json={"status": "finished"}, headers=AUTH)
    assert finished.status_code == 200
    row = {"key": KernelKey(op_type="Relu", inputs=((1, 8),), outputs=((1, 8),)).to_dict(), "median_ms": 0.1,
           "p10_ms": 0.1, "p90_ms": 0.1, "repeats": 3}
    late = api.post(f"/api/v1/devices/{device}/measurements", json={"run_id": "done", "measurements": [row]},
                    headers=AUTH)
    assert_problem(late, 409, "run_closed", "run 'done' is finished: it takes no new measurements")
    killed = api.put(f"/api/v1/devices/{device}/runs/done", json={"status": "killed"}, headers=AUTH)
    assert_problem(killed, 409, "run_closed")
    assert api.post("/api/v1/devices", json=local_device_body("other"), headers=AUTH).status_code == 201
    taken = api.post("/api/v1/devices/other/runs", json={"run_id": "done"}, headers=AUTH)
    assert_problem(taken, 409, "run_conflict", "run 'done' belongs to device id")
    report = {"status": "finished", "report": {"text": "x" * 1_100_000}}  # over the default 1024 KB
    assert api.post(f"/api/v1/devices/{device}/runs", json={"run_id": "big"}, headers=AUTH).status_code == 201
    assert_problem(api.put(f"/api/v1/devices/{device}/runs/big", json=report, headers=AUTH), 422, "invalid_report",
                   "LATPRED_MAX_RUN_REPORT_KB")
    # A report is a run report (predictor.records.RunReport) of a version this server reads.
    assert api.post(f"/api/v1/devices/{device}/runs", json={"run_id": "later"}, headers=AUTH).status_code == 201
    for bad, detail in (({"version": 2}, "unknown version 2"), ({"end_to_end": "x"}, "end_to_end must be a list")):
        refused = api.put(f"/api/v1/devices/{device}/runs/later", json={"status": "finished", "report": bad},
                          headers=AUTH)
        assert_problem(refused, 422, "invalid_report", detail)
    good = {"version": 1, "end_to_end": [{"label": "m", "measured_ms": 2.0, "kernel_hashes": ["h"]}], "extra": 1}
    stored = api.put(f"/api/v1/devices/{device}/runs/later", json={"status": "finished", "report": good}, headers=AUTH)
    assert stored.status_code == 200 and stored.json()["report"] == good  # stored as sent, extra keys kept


def test_an_unreachable_database_is_a_problem(tmp_path: Path) -> None:
    settings = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/latpred", home=tmp_path,
                        api_tokens=TOKEN)
    with TestClient(create_app(settings)) as client:
        assert_problem(client.get("/api/v1/devices"), 503, "database_unavailable", "cannot connect to database")
        # The health check answers its own document, not a problem.
        health = client.get("/api/v1/health")
        assert health.status_code == 503 and health.headers["content-type"] == "application/json"


def test_a_question_past_the_deadline_is_a_problem(tmp_path: Path) -> None:
    """The prediction workers' answers: a question stopped at the deadline is 504 deadline_exceeded."""
    settings = Settings(home=tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'latpred.db'}", api_tokens=TOKEN,
                        predict_timeout_s=0.05)
    with TestClient(create_app(settings)) as client:
        assert client.post("/api/v1/devices", json=local_device_body(), headers=AUTH).status_code == 201
        model = client.post("/api/v1/models", files={"file": ("c.onnx", conv_chain(50).SerializeToString())},
                            headers=AUTH).json()
        measure_all(client, local_device_body()["name"], model)
        answer = client.post("/api/v1/predict", json={"device": local_device_body()["name"], "model_id": model["id"]})
        assert_problem(answer, 504, "deadline_exceeded", "(LATPRED_PREDICT_TIMEOUT_S) and was stopped")


# --- measurement conflicts --------------------------------------------------------------------------------------------


def test_conflicting_measurements_are_named(api: TestClient, device: str) -> None:
    """Same run and key with another median: the answer counts them all, lists the first 20 and names 5 keys."""
    keys = [KernelKey(op_type="Gemm", inputs=((1, 64),), outputs=((1, n),), weight=(n, 64)) for n in range(1, 26)]

    def rows(median_ms: float) -> list[dict[str, Any]]:
        return [{"key": key.to_dict(), "median_ms": median_ms, "p10_ms": median_ms, "p90_ms": median_ms,
                 "repeats": 5} for key in keys]

    url = f"/api/v1/devices/{device}/measurements"
    assert api.post(url, json={"run_id": "r", "measurements": rows(0.5)}, headers=AUTH).json()["inserted"] == 25
    answer = api.post(url, json={"run_id": "r", "measurements": rows(0.75)}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["inserted"], body["duplicates"], body["conflicts"]) == (0, 25, 25)
    assert [c["key_hash"] for c in body["conflicting"]] == [key.key_hash for key in keys[:MAX_LISTED_CONFLICTS]]
    assert body["first_conflict"] == body["conflicting"][0] == {
        "key_hash": keys[0].key_hash, "op_type": "Gemm", "stored_median_ms": 0.5, "sent_median_ms": 0.75}
    message = body["message"]
    assert message.startswith("25 measurement(s) of run 'r' repeat a stored (run, key) with another median and were "
                              "not stored (the stored median is kept): ")
    assert [key.key_hash in message for key in keys[:6]] == [True] * 5 + [False]
    assert f"Gemm key {keys[0].key_hash}: stored 0.5 ms, sent 0.75 ms" in message
    assert message.endswith("; and 20 more")
    retry = api.post(url, json={"run_id": "r", "measurements": rows(0.5)}, headers=AUTH).json()
    assert (retry["conflicts"], retry["conflicting"], retry["message"]) == (0, [], None)


# --- the OpenAPI document ---------------------------------------------------------------------------------------------


def resolve(document: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return document["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else schema


def refs_of(schema: dict[str, Any]) -> set[str]:
    """The component names a property schema refers to (directly, through anyOf, or as list items)."""
    found: set[str] = set()
    for part in [schema, *schema.get("anyOf", []), schema.get("items", {})]:
        if "$ref" in part:
            found.add(part["$ref"].rsplit("/", 1)[-1])
    return found


def test_openapi_names_compression_config_and_kernel_key(api: TestClient) -> None:
    document = api.get("/api/v1/openapi.json").json()
    schemas = document["components"]["schemas"]
    assert {"CompressionConfig", "LayerCompression", "KernelKey", "ProblemPublic", "ValidationProblemPublic"} <= set(
        schemas)
    assert not {"HTTPValidationError", "ValidationError", "KernelKeyCreate"} & set(schemas)
    body = document["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    predict_request = resolve(document, body)
    assert refs_of(predict_request["properties"]["config"]) == {"CompressionConfig"}
    answer = document["paths"]["/api/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    assert refs_of(resolve(document, answer["schema"])["properties"]["config"]) == {"CompressionConfig"}
    assert refs_of(schemas["RankCandidate"]["properties"]["config"]) == {"CompressionConfig"}
    assert refs_of(schemas["RankRequest"]["properties"]["candidates"]) == {"RankCandidate"}
    assert refs_of(schemas["MeasurementCreate"]["properties"]["key"]) == {"KernelKey"}
    assert set(schemas["CompressionConfig"]["properties"]) == {"default", "layers"}
    assert {"op_type", "inputs", "outputs", "weight", "attrs", "dtype", "bits", "sparsity"} <= set(
        schemas["KernelKey"]["properties"])


def test_openapi_documents_errors_as_problems(api: TestClient) -> None:
    document = api.get("/api/v1/openapi.json").json()
    assert set(resolve(document, document["components"]["schemas"]["ProblemCode"])["enum"]) == {
        code.value for code in ProblemCode}
    errors = 0
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) < 400 or (path, status) == ("/api/v1/health", "503"):
                    continue
                errors += 1
                assert list(response["content"]) == [PROBLEM_MEDIA_TYPE], (method, path, status)
                expected = "ValidationProblemPublic" if status == "422" else "ProblemPublic"
                assert refs_of(response["content"][PROBLEM_MEDIA_TYPE]["schema"]) == {expected}
    assert errors > 50
    health_503 = document["paths"]["/api/v1/health"]["get"]["responses"]["503"]["content"]
    assert refs_of(health_503["application/json"]["schema"]) == {"HealthPublic"}



def test_every_code_is_documented_once() -> None:
    """docs/rest.md's table of codes lists exactly the codes the API can answer."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (?:\d{3}|other) \|", REST_DOC.read_text(), flags=re.MULTILINE)
    assert sorted(rows) == sorted(code.value for code in ProblemCode)
