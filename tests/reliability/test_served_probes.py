"""Hostile input and requests against a real `latpred serve` on PostgreSQL (the probes of issue 22).

Every probe answers 4xx (or 503/504 for questions the server stops) with a one-line detail, nothing is read or
stored that should not be, and the server stays healthy: files and rows of models agree after every upload,
and the server's log has no traceback at the end. Limits are set low so the probes stay small.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from predictor.kernels.keys import KernelKey
from predictor.store import (
    MeasurementIn,
    add_measurements,
    create_store_engine,
    get_device,
    session_factory,
    session_scope,
)
from tests import factories
from tests.reliability.hostile_models import conv_chain, external_data_model, if_model, loop_model, relu_chain
from tests.reliability.served import (
    AUTH,
    Served,
    chunked,
    pending_question,
    prediction_workers,
    raw_http,
    rss_kb,
    serve,
)
from tests.service.conftest import local_device_body

DEVICE = "probe-cpu"
MAX_NODES = 2000
MAX_BODY_MB = 1
MAX_KERNELS_MB = 1
MAX_REPORT_KB = 64
# A question that takes seconds: int8 quantization of a chain of convolutions costs time growing faster than the
# chain (about 20 s for 1000 layers on the 2-core CI host); the test stops it long before.
SLOW_LAYERS = 1000
BIG_BODY_BYTES = 50 * 2**20

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(600)]


def conv_key(channels: int = 32) -> dict[str, Any]:
    return KernelKey(op_type="Conv", inputs=((1, 16, 28, 28),), outputs=((1, channels, 28, 28),),
                     weight=(channels, 16, 3, 3), attrs=(("kernel_shape", (3, 3)),)).to_dict()


def measurement(key: dict[str, Any], median_ms: float = 0.5) -> dict[str, Any]:
    return {"key": key, "median_ms": median_ms, "p10_ms": median_ms * 0.9, "p90_ms": median_ms * 1.1,
            "repeats": 10}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, module_postgres_url: str) -> Iterator[Served]:
    """A server with low limits and a device that has one measurement (enough to answer questions)."""
    with serve(tmp_path_factory.mktemp("probes"), module_postgres_url, max_body_mb=MAX_BODY_MB,
               max_model_nodes=MAX_NODES, max_model_kernels_mb=MAX_KERNELS_MB, max_run_report_kb=MAX_REPORT_KB,
               anonymous_requests_per_minute=0) as served:
        with served.client() as client:
            assert client.post("/api/devices", json=local_device_body(DEVICE)).status_code == 201
            seeded = client.post(f"/api/devices/{DEVICE}/measurements",
                                 json={"run_id": "seed", "measurements": [measurement(conv_key())]})
            assert seeded.status_code == 200, seeded.text
        yield served


def upload(server: Served, data: bytes, name: str = "m.onnx") -> Any:
    with server.client() as client:
        return client.post("/api/models", files={"file": (name, data)})


def assert_files_match_rows(server: Served) -> None:
    assert server.model_bytes() == server.model_rows(), "every model's bytes have its row and every row its bytes"


# --- 1. nothing is read through a model ------------------------------------------------------------------------


@pytest.mark.parametrize("location", [".git/config", "pyproject.toml", "no-such-file", "/etc/passwd", "../../.env"])
def test_models_with_external_data_are_refused_and_nothing_is_read(server: Served, location: str) -> None:
    """Whatever the location (a file beside the server, one that does not exist, an absolute path): the same 422,
    so the answer says nothing about which files exist; nothing is stored."""
    data = external_data_model(location)
    response = upload(server, data)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.replace(repr(location), "<location>") == (
        "uploaded model: the model keeps 1 tensor(s) in external data files (first: <location>); upload a "
        "self-contained model (onnx.save_model(model, path, save_as_external_data=False))")
    with server.client(token=False) as anonymous:
        assert anonymous.get(f"/api/models/{hashlib.sha256(data).hexdigest()}").status_code == 404
    assert_files_match_rows(server)


# --- 2. bounded cost of a model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "fragment"), [
    (relu_chain(2500), f"more than {MAX_NODES:,} nodes (subgraphs included)"),
    (loop_model(body_nodes=2500), f"more than {MAX_NODES:,} nodes (subgraphs included)"),
], ids=["2500-relus", "loop-of-2500"])
def test_models_over_the_node_limit_are_refused_before_they_are_parsed(server: Served, model: Any,
                                                                       fragment: str) -> None:
    response = upload(server, model.SerializeToString())
    assert response.status_code == 422, response.text
    assert fragment in response.json()["detail"] and "LATPRED_MAX_MODEL_NODES" in response.json()["detail"]
    assert_files_match_rows(server)


def test_a_kernel_list_over_its_limit_is_refused_and_nothing_stored(server: Served) -> None:
    model = relu_chain(200)
    for index, node in enumerate(model.graph.node):
        node.name = f"relu_{index}_" + "n" * 4000  # exporters' long scoped names, to the extreme
    response = upload(server, model.SerializeToString())
    assert response.status_code == 422, response.text
    assert f"over the limit of {MAX_KERNELS_MB:g} MB" in response.json()["detail"]
    assert "LATPRED_MAX_MODEL_KERNELS_MB" in response.json()["detail"]
    assert_files_match_rows(server)


# --- 3. valid input is never a 500, and never half-written ---------------------------------------------------------


@pytest.mark.parametrize("model", [if_model(), loop_model()], ids=["if", "loop"])
def test_control_flow_models_are_stored_whole(server: Served, model: Any) -> None:
    response = upload(server, model.SerializeToString())
    assert response.status_code == 201, response.text
    stored = response.json()
    op_types = {kernel["op_type"] for kernel in stored["kernels"]}
    assert op_types & {"If", "Loop"}
    graph_keys = [kernel["key"]["attrs"] for kernel in stored["kernels"] if kernel["op_type"] in ("If", "Loop")]
    assert all(str(value).startswith("graph:") for attrs in graph_keys for value in attrs.values())
    with server.client(token=False) as anonymous:
        assert anonymous.get(f"/api/models/{stored['id']}").json() == stored
        question = anonymous.post("/api/predict", json={"device": DEVICE, "model_id": stored["id"]})
        assert question.status_code == 200, question.text
    assert_files_match_rows(server)


def _nul_named_model() -> bytes:
    model = factories.gemm_model(k=8, n=4)
    model.graph.node[0].name = "fc\x00evil"
    return model.SerializeToString()


@pytest.mark.parametrize("data", [
    factories.residual_model().SerializeToString()[:2000],
    _nul_named_model(),
    b"\x08" * 100,
], ids=["truncated", "nul-in-a-name", "garbage"])
def test_failed_uploads_leave_no_file_and_no_row(server: Served, data: bytes) -> None:
    files, rows = server.model_bytes(), server.model_rows()
    response = upload(server, data)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"] and "\n" not in response.json()["detail"]
    assert (server.model_bytes(), server.model_rows()) == (files, rows)


# --- 4. no unauthenticated denial of service -----------------------------------------------------------------------


def test_oversized_json_bodies_are_refused_before_they_are_read(server: Served) -> None:
    before_kb = rss_kb(server.pid)
    declared = raw_http(server.url, "POST", "/api/predict",
                        {"Content-Type": "application/json", "Content-Length": str(BIG_BODY_BYTES)})
    assert declared.status == 413 and declared.sent_body_bytes == 0
    assert f"exceeds {MAX_BODY_MB:g} MB (LATPRED_MAX_BODY_MB)" in json.loads(declared.body)["detail"]
    for _ in range(3):
        streamed = raw_http(server.url, "POST", "/api/predict",
                            {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                            chunked(BIG_BODY_BYTES))
        assert streamed.status == 413
        assert streamed.sent_body_bytes < BIG_BODY_BYTES / 2, "answered while the body was still coming"
    # Parsing a 50 MB body took hundreds of MB; refusing it takes none.
    assert rss_kb(server.pid) - before_kb < 64 * 1024
    with server.client() as client:
        assert client.get("/api/health").json() == {"status": "ok", "database": "ok"}


@pytest.mark.parametrize(("method", "path"), [
    ("POST", f"/api/devices/{DEVICE}/measurements"),
    ("PUT", f"/api/devices/{DEVICE}/runs/seed"),
    ("POST", "/api/devices"),
    ("POST", "/api/models"),
])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token"], ids=["no-token", "wrong-token"])
def test_writes_without_a_valid_token_are_refused_before_their_body(server: Served, method: str, path: str,
                                                                    authorization: str | None) -> None:
    headers = {"Content-Type": "application/json", "Content-Length": str(BIG_BODY_BYTES)}
    if authorization:
        headers["Authorization"] = authorization
    answer = raw_http(server.url, method, path, headers, [b" " * 2**20] * 50)
    assert answer.status == 401
    assert answer.sent_body_bytes < BIG_BODY_BYTES / 2, "answered before the body"
    assert answer.headers["www-authenticate"] == "Bearer"


def test_the_models_page_lists_no_model_ids(server: Served) -> None:
    stored = upload(server, factories.gemm_model(k=16, n=8).SerializeToString()).json()
    with server.client(token=False) as anonymous:
        page = anonymous.get("/models")
        assert page.status_code == 200 and stored["id"][:12] not in page.text
        assert anonymous.get("/api/models").status_code == 401
    with server.client() as client:
        assert stored["id"] in {m["id"] for m in client.get("/api/models").json()["data"]}


def test_a_question_stops_when_its_client_goes_away(server: Served) -> None:
    slow = upload(server, conv_chain(SLOW_LAYERS).SerializeToString())
    assert slow.status_code == 201, slow.text
    with server.client(token=False) as anonymous:  # a worker, started and idle
        small = upload(server, factories.gemm_model(k=16, n=8).SerializeToString()).json()
        assert anonymous.post("/api/predict", json={"device": DEVICE, "model_id": small["id"]}).status_code == 200
    workers = prediction_workers(server.pid)
    assert workers
    question = {"device": DEVICE, "model_id": slow.json()["id"], "config": {"default": {"bits": 8}}}
    with pending_question(server.url, "/api/predict", question):
        time.sleep(1.0)  # the question reaches the worker; leaving the block closes the connection
    deadline = time.monotonic() + 60
    while workers <= prediction_workers(server.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not workers <= prediction_workers(server.pid), "the worker answering the question was stopped"
    with server.client(token=False) as anonymous:  # a new worker answers the next question
        assert anonymous.post("/api/predict", json={"device": DEVICE, "model_id": small["id"]}).status_code == 200


# --- 5. no impossible measurement is stored -------------------------------------------------------------------------


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize(("key_text", "fragment"), [
    (json.dumps({**conv_key(), "attrs": {"deep": "__DEEP__"}}).replace('"__DEEP__"', nested(328)),
     "not a list in a list"),
    (json.dumps({**conv_key(), "attrs": {"deep": "__DEEP__"}}).replace('"__DEEP__"', nested(5000)),
     "nested too deeply"),
    (json.dumps({**conv_key(), "inputs": [[1, -16, 28, 28]]}), "greater than or equal to 1"),
    (json.dumps({**conv_key(), "inputs": [[1, 2**63, 28, 28]]}), "less than or equal to 2147483647"),
    (json.dumps({**conv_key(), "outputs": [[1] * 10_000]}), "at most 8 items"),
    (json.dumps({**conv_key(), "dtype": "complex512"}), "unknown dtype"),
    (json.dumps({**conv_key(), "op_type": "=HYPERLINK(\"http://evil\")"}), "should match pattern"),
], ids=["attrs-328-deep", "attrs-5000-deep", "negative-dim", "dim-past-int64", "10000-dims", "unknown-dtype",
        "formula-op-type"])
def test_impossible_measurements_are_422_and_nothing_is_stored(server: Served, key_text: str,
                                                               fragment: str) -> None:
    good = json.dumps(measurement(conv_key(48)))
    body = f'{{"run_id": "impossible", "measurements": [{good}, {{"key": {key_text}, "median_ms": 0.5, ' \
           '"p10_ms": 0.4, "p90_ms": 0.6, "repeats": 5}]}'
    with server.client() as client:
        response = client.post(f"/api/devices/{DEVICE}/measurements", content=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 422, response.text
        assert fragment in response.json()["detail"]
        stored = client.get(f"/api/devices/{DEVICE}/measurements", params={"limit": 1000}).json()["data"]
        assert {row["run_id"] for row in stored} == {"seed"}


def test_conflicting_duplicates_are_reported(server: Served) -> None:
    with server.client() as client:
        url = f"/api/devices/{DEVICE}/measurements"
        first = client.post(url, json={"run_id": "dup", "measurements": [measurement(conv_key(64), 0.5)]}).json()
        assert (first["inserted"], first["conflicts"]) == (1, 0)
        again = client.post(url, json={"run_id": "dup", "measurements": [measurement(conv_key(64), 0.5),
                                                                          measurement(conv_key(64), 0.9)]}).json()
        assert (again["inserted"], again["duplicates"], again["conflicts"]) == (0, 2, 1)
        assert again["first_conflict"] == {"key_hash": KernelKey.from_dict(conv_key(64)).key_hash,
                                           "op_type": "Conv", "stored_median_ms": 0.5, "sent_median_ms": 0.9}


def test_finished_runs_are_final_and_reports_bounded(server: Served) -> None:
    with server.client() as client:
        runs = f"/api/devices/{DEVICE}/runs"
        assert client.post(runs, json={"run_id": "final"}).status_code == 201
        too_big = client.put(f"{runs}/final", json={"status": "finished", "report": {"log": "x" * 100_000}})
        assert too_big.status_code == 422
        assert f"over the limit of {MAX_REPORT_KB:g} KB" in too_big.json()["detail"]
        report = {"items_done": ["a"], "kernels": 3}
        assert client.put(f"{runs}/final", json={"status": "finished", "report": report}).status_code == 200
        assert client.put(f"{runs}/final", json={"status": "finished", "report": report}).status_code == 200
        for change in ({"status": "finished", "report": {"items_done": []}}, {"status": "killed", "report": report}):
            refused = client.put(f"{runs}/final", json=change)
            assert refused.status_code == 409 and "is finished since" in refused.json()["detail"]
        late = client.post(f"/api/devices/{DEVICE}/measurements",
                           json={"run_id": "final", "measurements": [measurement(conv_key(96))]})
        assert late.status_code == 409 and "takes no new measurements" in late.json()["detail"]
        detail = client.get(f"/api/devices/{DEVICE}").json()
        assert next(run for run in detail["runs"] if run["run_id"] == "final")["report"] == report


def test_csv_export_neutralises_formula_prefixes(server: Served) -> None:
    """Rows stored before keys were validated may hold any op type: the export quotes formula-like text cells."""
    engine = create_store_engine(server.store_url)
    try:
        with session_scope(session_factory(engine)) as session:
            device = get_device(session, DEVICE)
            for index, op_type in enumerate(('=HYPERLINK("http://evil","x")', "+cmd", "-2+3", "@SUM(A1)", "\tTab")):
                add_measurements(session, device, "legacy", [MeasurementIn(
                    key={"op_type": op_type}, key_hash=f"legacy{index}", op_type=op_type, bits=32, median_ms=1.0,
                    p10_ms=1.0, p90_ms=1.0, repeats=1)])
    finally:
        engine.dispose()
    with server.client(token=False) as anonymous:
        exported = anonymous.get(f"/api/devices/{DEVICE}/measurements", params={"format": "csv", "limit": 1000})
    assert exported.status_code == 200
    legacy = [row for row in csv.DictReader(io.StringIO(exported.text)) if row["run_id"] == "legacy"]
    assert [row["op_type"] for row in legacy] == ["'=HYPERLINK(\"http://evil\",\"x\")", "'+cmd", "'-2+3",
                                                  "'@SUM(A1)", "'\tTab"]
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in legacy for cell in row.values())
    engine = create_store_engine(server.store_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM measurements WHERE run_id = 'legacy'"))
    finally:
        engine.dispose()


# --- the server after all of it ---------------------------------------------------------------------------------------


def test_the_server_stayed_healthy_and_logged_no_traceback(server: Served) -> None:
    with server.client() as client:
        assert client.get("/api/health").json() == {"status": "ok", "database": "ok"}
    assert_files_match_rows(server)
    log = server.log()
    assert "Traceback" not in log, log[-3000:]


# --- deadlines, queue and rate: servers of their own ------------------------------------------------------------------


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A server whose questions may take 50 ms (any real question takes longer: each one is stopped)."""
    root = tmp_path_factory.mktemp("deadline")
    with serve(root, f"sqlite:///{root / 'latpred.db'}", predict_timeout_s=0.05) as served:
        with served.client() as client:
            assert client.post("/api/devices", json=local_device_body(DEVICE)).status_code == 201
            assert client.post(f"/api/devices/{DEVICE}/measurements",
                               json={"run_id": "seed", "measurements": [measurement(conv_key())]}).status_code == 200
        yield served


@pytest.mark.parametrize("route", ["predict", "rank"])
def test_a_question_past_the_deadline_is_504_and_stopped(deadline_server: Served, route: str) -> None:
    model = upload(deadline_server, conv_chain(50).SerializeToString()).json()
    question: dict[str, Any] = {"device": DEVICE, "model_id": model["id"]}
    if route == "rank":
        question["candidates"] = [{"name": "int8", "config": {"default": {"bits": 8}}}]
    with deadline_server.client(token=False) as anonymous:
        answer = anonymous.post(f"/api/{route}", json=question)
        assert answer.status_code == 504, answer.text
        assert answer.json()["detail"].startswith("the question took longer than the limit of 0.05 s of this server "
                                                  "(LATPRED_PREDICT_TIMEOUT_S) and was stopped")
        assert anonymous.get("/api/health").status_code == 200
    # The worker that ran the question was killed with everything it started; none is left busy.
    assert prediction_workers(deadline_server.pid) == set()
    assert "stopped a question at the time limit of 0.05 s" in deadline_server.log()
    assert "Traceback" not in deadline_server.log()


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One prediction worker, no queue, and 20 requests a minute for clients without a token."""
    root = tmp_path_factory.mktemp("busy")
    with serve(root, f"sqlite:///{root / 'latpred.db'}", predict_workers=1, predict_queue=0,
               anonymous_requests_per_minute=20) as served:
        with served.client() as client:
            assert client.post("/api/devices", json=local_device_body(DEVICE)).status_code == 201
            assert client.post(f"/api/devices/{DEVICE}/measurements",
                               json={"run_id": "seed", "measurements": [measurement(conv_key())]}).status_code == 200
        yield served


def test_a_question_while_every_worker_is_busy_is_503(busy_server: Served) -> None:
    slow = upload(busy_server, conv_chain(SLOW_LAYERS).SerializeToString()).json()
    question = {"device": DEVICE, "model_id": slow["id"], "config": {"default": {"bits": 8}}}
    with pending_question(busy_server.url, "/api/predict", question, AUTH):
        deadline = time.monotonic() + 120
        while not prediction_workers(busy_server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # the slow question has the only worker once it exists
        with busy_server.client() as client:
            busy = client.post("/api/predict", json={"device": DEVICE, "model_id": slow["id"]})
        assert busy.status_code == 503, busy.text
        assert busy.headers["content-type"] == "application/problem+json" and busy.json()["code"] == "busy"
        assert "all 1 prediction workers are busy" in busy.json()["detail"]
        assert int(busy.headers["retry-after"]) >= 1
    # Closing the connection stopped the slow question: the worker is free again.
    with busy_server.client() as client:
        small = upload(busy_server, factories.gemm_model(k=16, n=8).SerializeToString()).json()
        deadline = time.monotonic() + 60
        answer = client.post("/api/predict", json={"device": DEVICE, "model_id": small["id"]})
        while answer.status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.5)
            answer = client.post("/api/predict", json={"device": DEVICE, "model_id": small["id"]})
        assert answer.status_code == 200, answer.text


def test_clients_without_a_token_are_rate_limited(busy_server: Served) -> None:
    with busy_server.client(token=False) as anonymous:
        statuses = [anonymous.get("/api/devices").status_code for _ in range(25)]
        assert statuses.count(200) <= 20 and statuses[-1] == 429
        limited = anonymous.get(f"/api/devices/{DEVICE}")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert "at most 20 a minute (LATPRED_ANONYMOUS_REQUESTS_PER_MINUTE)" in limited.json()["detail"]
        assert anonymous.get("/api/health").status_code == 200, "health checks are not counted"
    with busy_server.client() as client:
        assert [client.get("/api/devices").status_code for _ in range(25)] == [200] * 25
