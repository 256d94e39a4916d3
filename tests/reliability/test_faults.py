"""Faults: concurrent uploads of one run, a database outage under load, hostile paths.

The outage is a TCP proxy on loopback between the app and PostgreSQL: cutting it closes every
connection and refuses new ones, as a database restart does, without touching the server the rest of
the suite uses.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select

from predictor.kernels.keys import KernelKey
from predictor.store import Measurement, create_store_engine, open_store
from service.api.model_store import open_model_store
from service.api.predictions import PredictionCache, answer_question
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.proxy import TcpProxy
from tests.service.conftest import AUTH, TOKEN, kept_models, local_device_body

logger = logging.getLogger(__name__)

DEVICE = "fault-cpu"


def gemm_key(n: int, k: int = 64) -> dict[str, Any]:
    return KernelKey(op_type="Gemm", inputs=((1, k),), outputs=((1, n),), weight=(n, k)).to_dict()


def measurement_row(key: dict[str, Any], median_ms: float = 0.25) -> dict[str, Any]:
    return {"key": key, "median_ms": median_ms, "p10_ms": median_ms * 0.9, "p90_ms": median_ms * 1.2,
            "repeats": 30}


def rows_per_run(store_url: str, device: str = DEVICE) -> dict[str, int]:
    """Rows per run id, read straight from the database (not through the app)."""
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as connection:
            result = connection.execute(select(Measurement.run_id, func.count()).group_by(Measurement.run_id))
            return {run_id: int(count) for run_id, count in result}
    finally:
        engine.dispose()


def duplicate_rows(store_url: str) -> list[tuple[str, str, int]]:
    engine = create_store_engine(store_url)
    try:
        with engine.connect() as connection:
            statement = (select(Measurement.run_id, Measurement.key_hash, func.count())
                         .group_by(Measurement.device_id, Measurement.run_id, Measurement.key_hash)
                         .having(func.count() > 1))
            return [(run_id, key_hash, int(count)) for run_id, key_hash, count in connection.execute(statement)]
    finally:
        engine.dispose()


@pytest.fixture
def settings(store_url: str, tmp_path: Path) -> Settings:
    return Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        assert test_client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
        yield test_client


# --- (a) concurrent uploads of the same run ------------------------------------------------------------


@pytest.mark.timeout(120)
def test_concurrent_uploads_of_one_run_store_each_key_once(client: TestClient, store_url: str) -> None:
    """8 threads post overlapping, shuffled windows of one run at once: inserted counts add up to distinct keys."""
    keys = [gemm_key(n) for n in range(8, 68)]
    threads = 8
    for round_index in range(3):
        run_id = f"concurrent-{round_index}"
        batches = []
        for worker in range(threads):
            start = (worker * 7 + round_index) % len(keys)
            window = [keys[(start + offset) % len(keys)] for offset in range(40)]
            random.Random(worker * 31 + round_index).shuffle(window)
            batches.append([measurement_row(key, 0.1 + worker * 0.01) for key in window])
        batches[0] = [measurement_row(key) for key in keys]  # one agent sends the whole run
        barrier = threading.Barrier(threads)

        def send(batch: list[dict[str, Any]], run_id: str = run_id, barrier: threading.Barrier = barrier) -> Any:
            barrier.wait(timeout=30)
            return client.post(f"/api/devices/{DEVICE}/measurements",
                               json={"run_id": run_id, "measurements": batch}, headers=AUTH)

        with ThreadPoolExecutor(threads) as pool:
            responses = list(pool.map(send, batches))
        assert [r.status_code for r in responses] == [200] * threads, [r.text for r in responses]
        inserted = sum(r.json()["inserted"] for r in responses)
        duplicates = sum(r.json()["duplicates"] for r in responses)
        assert inserted == len(keys), f"round {round_index}: {inserted} inserted for {len(keys)} distinct keys"
        assert inserted + duplicates == sum(len(batch) for batch in batches)
        assert rows_per_run(store_url)[run_id] == len(keys)
    assert duplicate_rows(store_url) == []
    assert client.get(f"/api/devices/{DEVICE}").json()["measurement_count"] == 3 * len(keys)


# --- (b) the database restarted under load -------------------------------------------------------------


def _wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_database_outage_under_load_loses_no_accepted_measurement(postgres_url: str, tmp_path: Path) -> None:
    """Batches flow while the database connection is cut for 2 s: 503s, then recovery, and every 2xx is stored."""
    url = make_url(postgres_url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    proxy.start()
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = Settings(database_url=proxied, home=tmp_path / "home", api_tokens=TOKEN)
    results: list[tuple[str, int, int, str]] = []  # run id, status, rows, phase
    results_lock = threading.Lock()
    phase = {"name": "before"}
    stop = threading.Event()

    def post_batches(client: TestClient, worker: int) -> None:
        index = 0
        while not stop.is_set():
            run_id = f"load-{worker}-{index}"
            rows = [measurement_row(gemm_key(8 + n, k=32 + worker)) for n in range(1 + index % 7)]
            sent_in = phase["name"]
            response = client.post(f"/api/devices/{DEVICE}/measurements",
                                   json={"run_id": run_id, "measurements": rows}, headers=AUTH)
            with results_lock:
                results.append((run_id, response.status_code, len(rows), sent_in))
            if response.status_code >= 500:
                time.sleep(0.05)  # an agent backs off; it does not hammer a failing server
            index += 1

    def count(status: int, in_phase: str | None = None) -> int:
        with results_lock:
            return sum(1 for _, s, _, p in results if s == status and (in_phase is None or p == in_phase))

    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
            workers = [threading.Thread(target=post_batches, args=(client, w), daemon=True) for w in range(4)]
            for worker in workers:
                worker.start()
            _wait_for(lambda: count(200) >= 20, 30, "20 accepted batches before the outage")

            phase["name"] = "down"
            proxy.cut()
            _wait_for(lambda: count(503, "down") >= 5, 15, "503 answers while the database is down")
            health = client.get("/api/health")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            time.sleep(2.0)

            phase["name"] = "restored"
            proxy.start()
            _wait_for(lambda: count(200, "restored") >= 20, 30, "20 accepted batches after the database returned")
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
            assert client.get("/api/health").json() == {"status": "ok", "database": "ok"}

            logger.info("outage test: %s", {p: {st: count(st, p) for st in (200, 503)}
                                               for p in ("before", "down", "restored")})
            statuses = {status for _, status, _, _ in results}
            assert statuses <= {200, 503}, f"only 200 or 503 expected, got {sorted(statuses)}"
            stored = rows_per_run(postgres_url)
            accepted = [(run_id, rows) for run_id, status, rows, _ in results if status == 200]
            lost = [run_id for run_id, rows in accepted if stored.get(run_id) != rows]
            assert not lost, f"accepted batches missing from the database: {lost[:10]}"
            refused = [(run_id, rows) for run_id, status, rows, _ in results if status == 503]
            partial = [run_id for run_id, rows in refused if stored.get(run_id, 0) not in (0, rows)]
            assert not partial, f"refused batches partly written: {partial[:10]}"

            # The agent retries what was refused: idempotent, and afterwards nothing is missing.
            for run_id, rows in refused:
                worker_index, index = (int(part) for part in run_id.split("-")[1:])
                batch = [measurement_row(gemm_key(8 + n, k=32 + worker_index)) for n in range(1 + index % 7)]
                retried = client.post(f"/api/devices/{DEVICE}/measurements",
                                      json={"run_id": run_id, "measurements": batch}, headers=AUTH)
                assert retried.status_code == 200, retried.text
                assert retried.json()["inserted"] + retried.json()["duplicates"] == rows
            stored = rows_per_run(postgres_url)
            assert all(stored.get(run_id) == rows for run_id, _, rows, _ in results)
            assert duplicate_rows(postgres_url) == []
    finally:
        stop.set()
        proxy.cut()


# --- (c) no request path reaches the filesystem outside the data directory -------------------------------


async def _raw_request(app: FastAPI, method: str, raw_path: bytes, body: bytes = b"",
                       content_type: bytes = b"application/json") -> tuple[int, bytes]:
    """Call the ASGI app with a path exactly as given (HTTP clients normalise `..` before sending)."""
    path_part, _, query = raw_path.partition(b"?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        # Servers decode the path for `path` (uvicorn: unquote), keeping the bytes as sent in `raw_path`.
        "path": unquote(path_part.decode("latin-1"), encoding="latin-1"), "raw_path": path_part,
        "query_string": query, "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {TOKEN}".encode()),
                    (b"content-type", content_type), (b"content-length", str(len(body)).encode())],
    }
    received = {"sent": False}
    status = {"code": 0}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        if received["sent"]:
            await asyncio.sleep(3600)
        received["sent"] = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status["code"] = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status["code"], b"".join(chunks)


def _hostile_segments(marker: str) -> list[bytes]:
    m = marker.encode()
    return [
        b"../../" + m, b"..%2F..%2F" + m, b"%2e%2e%2f%2e%2e%2f" + m, b"%2E%2E/%2E%2E/" + m, b"..", b"%2e%2e",
        b"..%5C..%5C" + m, b"/tmp/" + m, b"%2Ftmp%2F" + m, b"a%00b", b"%00", m + b"%00.onnx",
        b"....//....//" + m, b"%252e%252e%252f" + m,
    ]


def _snapshot(root: Path, skip: list[Path]) -> set[str]:
    """Every path under root except the data directory and the SQLite store's folder (both may change)."""
    return {str(path.relative_to(root)) for path in root.rglob("*")
            if not any(path == folder or folder in path.parents for folder in skip)}


@pytest.mark.timeout(120)
def test_hostile_paths_are_4xx_and_touch_nothing_outside_home(settings: Settings, tmp_path: Path) -> None:
    marker = f"escape-{uuid.uuid4().hex[:8]}"
    app = create_app(settings)
    database = make_url(settings.resolved_database_url)
    skip = [settings.home] + ([Path(database.database).parent] if database.get_backend_name() == "sqlite"
                              and database.database else [])
    before = _snapshot(tmp_path, skip)
    answers: list[tuple[str, bytes, int]] = []
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/api/devices", json=local_device_body(DEVICE), headers=AUTH).status_code == 201
        uploaded = client.post("/api/models", headers=AUTH,
                               files={"file": (f"/tmp/{marker}.onnx", factories.gemm_model().SerializeToString())})
        assert uploaded.status_code == 201 and uploaded.json()["name"] == f"{marker}.onnx"
        model_id = uploaded.json()["id"]
        # Measured, so predict gets past "no measurements" to the model lookup the hostile ids aim at.
        rows = [measurement_row(kernel["key"]) for kernel in uploaded.json()["kernels"]]
        measured = client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "m", "measurements": rows},
                               headers=AUTH)
        assert measured.status_code == 200, measured.text
        assert client.post("/api/predict", json={"device": DEVICE, "model_id": model_id}).status_code == 200
        run = b'{"run_id": "r1"}'
        for segment in _hostile_segments(marker):
            requests = [
                ("GET", b"/api/devices/" + segment, b""),
                ("GET", b"/api/devices/" + segment + b"/measurements", b""),
                ("POST", b"/api/devices/" + segment + b"/measurements", b'{"run_id": "r1", "measurements": []}'),
                ("POST", b"/api/devices/" + segment + b"/runs", run),
                ("PUT", b"/api/devices/" + DEVICE.encode() + b"/runs/" + segment, b'{"status": "finished"}'),
                ("POST", b"/api/devices/" + segment + b"/train", b""),
                ("GET", b"/api/jobs/" + segment, b""),
                ("GET", b"/api/models/" + segment, b""),
                ("GET", b"/devices/" + segment, b""),
                ("GET", b"/api/dashboard/devices/" + segment + b"/charts", b""),
                ("GET", b"/static/" + segment, b""),
                ("GET", b"/static/../../../../etc/passwd", b""),
            ]
            for method, raw_path, body in requests:
                status, content = asyncio.run(_raw_request(app, method, raw_path, body))
                answers.append((method, raw_path, status))
                assert b"root:" not in content, raw_path
            decoded = unquote(segment.decode())
            for document in (
                {"device": DEVICE, "model_id": decoded},
                {"device": decoded, "model_id": model_id},
                {"device": DEVICE, "model_id": f"{model_id}/{decoded}"},
            ):
                for route in ("/api/predict", "/api/rank"):
                    body_doc = dict(document)
                    if route == "/api/rank":
                        body_doc["candidates"] = [{"name": decoded or "x", "config": {}}]
                    response = client.post(route, json=body_doc)
                    answers.append(("POST", f"{route} {body_doc}".encode(), response.status_code))
            response = client.post("/api/devices", json=local_device_body(decoded), headers=AUTH)
            answers.append(("POST", f"/api/devices name={decoded!r}".encode(), response.status_code))
            response = client.post(f"/api/devices/{DEVICE}/runs", json={"run_id": decoded}, headers=AUTH)
            answers.append(("POST", f"/api/devices/{DEVICE}/runs run_id={decoded!r}".encode(), response.status_code))
        health = client.get("/api/health")
        assert health.status_code == 200, "the hostile requests must not break the service"

    not_4xx = [(method, raw.decode("latin-1"), status) for method, raw, status in answers
               if not 400 <= status < 500]
    assert not not_4xx, f"hostile requests not answered 4xx: {not_4xx[:20]}"
    after = _snapshot(tmp_path, skip)
    assert after == before, f"created outside the data directory: {sorted(after - before)}"
    assert not any(marker in str(path) for path in settings.home.rglob("*")), "a hostile name became a path"
    assert not list(Path("/tmp").glob(f"{marker}*")), "a hostile name reached /tmp"
    assert list(kept_models(settings)) == [model_id]


def test_raw_request_helper_reaches_the_app(settings: Settings) -> None:
    """The helper itself works: a normal path through it is a 200 (else the test above proves nothing)."""
    app = create_app(settings)
    with TestClient(app):
        status, content = asyncio.run(_raw_request(app, "GET", b"/api/health"))
        assert status == 200 and b'"ok"' in content
        status, _ = asyncio.run(_raw_request(app, "GET", b"/api/devices/nope%2e%2e"))
        assert status == 404
    assert httpx.URL("http://x/a/../b").raw_path == b"/b", "httpx normalises dot segments (why the helper exists)"


# --- (d) a batch that lands while a predictor is being loaded ---------------------------------------------


def test_predict_while_a_batch_commits_during_the_predictor_load(client: TestClient, settings: Settings,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded = client.post("/api/models", files={"file": ("g.onnx", factories.gemm_model().SerializeToString())},
                           headers=AUTH)
    assert uploaded.status_code == 201, uploaded.text
    rows = [measurement_row(kernel["key"]) for kernel in uploaded.json()["kernels"]]
    assert client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "base", "measurements": rows},
                       headers=AUTH).status_code == 200

    import predictor.estimation.estimate as estimate_module

    real_read = estimate_module.read_measured_rows
    raced = {"done": False}

    def read_while_another_agent_commits(session: Any, device_id: int, *args: Any, **kwargs: Any) -> Any:
        if not raced["done"]:
            raced["done"] = True
            late = client.post(f"/api/devices/{DEVICE}/measurements", headers=AUTH,
                               json={"run_id": "late", "measurements": [measurement_row(gemm_key(999))]})
            assert late.status_code == 200, late.text
        return real_read(session, device_id, *args, **kwargs)

    # The predictor reads its version, then its table; a batch committed between the two is in the table read or
    # the next update, never an error. The load runs where a prediction worker runs it
    # (service.api.predictions), here in this process so the race can be staged.
    monkeypatch.setattr(estimate_module, "read_measured_rows", read_while_another_agent_commits)
    store = open_store(settings)
    cache = PredictionCache(open_model_store(settings), refresh_wait_s=60.0)
    question = {"device": DEVICE, "model_id": uploaded.json()["id"]}
    try:
        answer = answer_question("predict", question, store, cache)
        again = answer_question("predict", question, store, cache)
        _, predictor = cache.device_predictor(store, DEVICE)
    finally:
        cache.close()
        store.close()
    assert predictor.measurement_count == len(rows) + 1, "the late batch is in the predictor"
    assert again["latency_ms"] == answer["latency_ms"]
    assert raced["done"]
    assert answer["latency_ms"] > 0 and answer["table_hit_rate"] == 1.0
