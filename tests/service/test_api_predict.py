"""REST API: predict and rank end to end, their caches, error statuses, and background training."""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel
from predictor.kernels.keys import KernelKey
from predictor.store import open_store
from service.api.model_store import open_model_store
from service.api.predictions import PredictionCache, answer_question
from service.app import create_app
from service.settings import Settings
from service.worker import JobWorker
from tests.service.conftest import AUTH, DEVICE, fake_measurement, local_device_body

CONFIGS = {
    "fp32": {},
    "pruned": {"default": {"prune_ratio": 0.5}},
    "int8": {"default": {"bits": 8}},
}


def medians_for(kernels: list[dict[str, Any]]) -> dict[str, float]:
    """Distinct fake medians per kernel hash: 0.1 ms, 0.2 ms, ..."""
    return {kernel["key_hash"]: round(0.1 * (index + 1), 3) for index, kernel in enumerate(kernels)}


@pytest.fixture
def measured(api: TestClient, device: str, uploaded: dict[str, Any]) -> dict[str, float]:
    """Every base kernel of the uploaded model measured on the device; returns median per key hash."""
    medians = medians_for(uploaded["kernels"])
    rows = [fake_measurement(kernel, medians[kernel["key_hash"]]) for kernel in uploaded["kernels"]]
    response = api.post(f"/api/devices/{device}/measurements", json={"run_id": "run-1", "measurements": rows},
                        headers=AUTH)
    assert response.json() == {"inserted": len(rows), "duplicates": 0, "conflicts": 0, "first_conflict": None,
                               "conflicting": [], "message": None}
    return medians


def predict(api: TestClient, **body: Any) -> Any:
    return api.post("/api/predict", json=body)


def test_predict_sums_measured_kernels(api: TestClient, device: str, uploaded: dict[str, Any],
                                       measured: dict[str, float]) -> None:
    response = predict(api, device=device, model_id=uploaded["id"])
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert estimate["model_id"] == uploaded["id"]
    assert estimate["config"] == {"default": {}, "layers": {}}
    assert estimate["device"] == device
    assert estimate["table_hit_rate"] == 1.0
    assert estimate["overhead_ms"] == 0.0
    assert estimate["sources"] == {"table": len(uploaded["kernels"])}
    assert estimate["latency_ms"] == pytest.approx(sum(measured.values()))
    assert [k["key_hash"] for k in estimate["kernels"]] == [k["key_hash"] for k in uploaded["kernels"]]
    assert [k["latency_ms"] for k in estimate["kernels"]] == pytest.approx(
        [measured[k["key_hash"]] for k in uploaded["kernels"]])
    low, high = estimate["interval_ms"]
    assert low < estimate["latency_ms"] < high


def test_repeated_questions_rebuild_nothing(api_settings: Settings, api: TestClient, device: str,
                                           uploaded: dict[str, Any], measured: dict[str, float],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The caches a prediction worker keeps, driven in this process: a repeated question rebuilds nothing, an
    upload is taken in without loading the device's table again."""
    calls = {"prepare": 0, "load": 0, "update": 0}
    create, load = PreparedModel.create.__func__, DevicePredictor.load.__func__  # type: ignore[attr-defined]
    update = DevicePredictor.updated

    def counting_create(cls: type[PreparedModel], *args: Any, **kwargs: Any) -> PreparedModel:
        calls["prepare"] += 1
        return create(cls, *args, **kwargs)  # type: ignore[no-any-return]

    def counting_load(cls: type[DevicePredictor], *args: Any, **kwargs: Any) -> DevicePredictor:
        calls["load"] += 1
        return load(cls, *args, **kwargs)  # type: ignore[no-any-return]

    def counting_update(self: DevicePredictor, *args: Any, **kwargs: Any) -> DevicePredictor:
        calls["update"] += 1
        return update(self, *args, **kwargs)

    monkeypatch.setattr(PreparedModel, "create", classmethod(counting_create))
    monkeypatch.setattr(DevicePredictor, "load", classmethod(counting_load))
    monkeypatch.setattr(DevicePredictor, "updated", counting_update)
    store = open_store(api_settings)
    # Waits for the predictor's refresh as long as it takes (the default answers with the current one meanwhile).
    cache = PredictionCache(open_model_store(api_settings), refresh_wait_s=60.0)
    question = {"device": device, "model_id": uploaded["id"]}
    try:
        first = answer_question("predict", question, store, cache)
        assert calls == {"prepare": 1, "load": 1, "update": 0}
        for _ in range(3):
            assert answer_question("predict", question, store, cache)["latency_ms"] == first["latency_ms"]
        assert calls == {"prepare": 1, "load": 1, "update": 0}, "an unchanged device is not even brought up to date"

        # Another process uploads: the next answer takes the new rows in (merged, not loaded again).
        kernel = uploaded["kernels"][0]
        api.post(f"/api/devices/{device}/measurements",
                 json={"run_id": "run-2", "measurements": [fake_measurement(kernel, 5.0)]}, headers=AUTH)
        after = answer_question("predict", question, store, cache)
        assert calls == {"prepare": 1, "load": 1, "update": 1}
        old = measured[kernel["key_hash"]]
        # A key measured in two runs counts with the median of its run medians.
        assert after["latency_ms"] == pytest.approx(first["latency_ms"] - old + (old + 5.0) / 2)
        assert answer_question("predict", question, store, cache)["latency_ms"] == after["latency_ms"]
        assert calls == {"prepare": 1, "load": 1, "update": 1}
    finally:
        cache.close()
        store.close()


def test_an_upload_never_makes_a_question_wait_for_a_reload(api_settings: Settings, api: TestClient, device: str,
                                                           uploaded: dict[str, Any], measured: dict[str, float],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """While a device's predictor is being brought up to date, questions are answered by the current one."""
    release = threading.Event()
    refreshing = threading.Event()
    update = DevicePredictor.updated

    def slow_update(self: DevicePredictor, *args: Any, **kwargs: Any) -> DevicePredictor:
        refreshing.set()
        assert release.wait(60), "the test never released the refresh"
        return update(self, *args, **kwargs)

    monkeypatch.setattr(DevicePredictor, "updated", slow_update)
    store = open_store(api_settings)
    cache = PredictionCache(open_model_store(api_settings), refresh_wait_s=0.05)
    question = {"device": device, "model_id": uploaded["id"]}
    try:
        first = answer_question("predict", question, store, cache)["latency_ms"]
        kernel = uploaded["kernels"][0]
        api.post(f"/api/devices/{device}/measurements",
                 json={"run_id": "run-2", "measurements": [fake_measurement(kernel, 5.0)]}, headers=AUTH)
        # The refresh is stuck (a table of millions being read, say): every question meanwhile gets an answer.
        answers = [answer_question("predict", question, store, cache)["latency_ms"] for _ in range(3)]
        assert refreshing.is_set() and not release.is_set()
        assert answers == [first] * 3
        release.set()
        old = measured[kernel["key_hash"]]
        expected = pytest.approx(first - old + (old + 5.0) / 2)
        deadline = time.monotonic() + 60
        while answer_question("predict", question, store, cache)["latency_ms"] != expected:
            assert time.monotonic() < deadline, "the refreshed predictor never answered"
            time.sleep(0.05)
    finally:
        release.set()
        cache.close()
        store.close()


def test_new_measurements_reach_the_prediction_workers(api_settings: Settings, residual_bytes: bytes) -> None:
    """The app's prediction worker processes check the store before each answer: the next answer uses an upload."""
    with TestClient(create_app(api_settings)) as client:
        assert client.post("/api/devices", json=local_device_body(), headers=AUTH).status_code == 201
        model = client.post("/api/models", files={"file": ("block.onnx", residual_bytes)}, headers=AUTH).json()
        medians = medians_for(model["kernels"])
        rows = [fake_measurement(kernel, medians[kernel["key_hash"]]) for kernel in model["kernels"]]
        assert client.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "run-1", "measurements": rows},
                           headers=AUTH).status_code == 200
        first = predict(client, device=DEVICE, model_id=model["id"]).json()["latency_ms"]
        kernel = model["kernels"][0]
        assert client.post(f"/api/devices/{DEVICE}/measurements",
                           json={"run_id": "run-2", "measurements": [fake_measurement(kernel, 5.0)]},
                           headers=AUTH).status_code == 200
        after = predict(client, device=DEVICE, model_id=model["id"]).json()["latency_ms"]
        old = medians[kernel["key_hash"]]
        assert after == pytest.approx(first - old + (old + 5.0) / 2)


def test_rank_sorts_candidates_with_speedups(api: TestClient, device: str, uploaded: dict[str, Any],
                                             measured: dict[str, float]) -> None:
    candidates = [{"name": name, "config": config} for name, config in CONFIGS.items()]
    response = api.post("/api/rank", json={"device": device, "model_id": uploaded["id"], "candidates": candidates,
                                           "target_speedup": 1.2})
    assert response.status_code == 200, response.text
    ranking = response.json()
    assert ranking["model_id"] == uploaded["id"]
    assert ranking["baseline_ms"] == pytest.approx(sum(measured.values()))
    ranked = ranking["ranked"]
    assert sorted(row["name"] for row in ranked) == sorted(CONFIGS)
    latencies = [row["latency_ms"] for row in ranked]
    assert latencies == sorted(latencies)
    for row in ranked:
        assert row["speedup"] == pytest.approx(ranking["baseline_ms"] / row["latency_ms"])
        assert row["meets_target"] == (row["speedup"] >= 1.2)
    fp32 = next(row for row in ranked if row["name"] == "fp32")
    assert fp32["speedup"] == pytest.approx(1.0)
    assert fp32["table_hit_rate"] == 1.0


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"default": {"bits": 7}}, "invalid compression config at default.bits"),
        ({"default": {"prune_ratio": 2.0}}, "invalid compression config at default.prune_ratio"),
        ({"colour": "red"}, "invalid compression config at colour"),
        ({"layers": {"no_such_layer*": {"bits": 8}}}, "matches no node of the model"),
    ],
)
def test_bad_config_is_422(api: TestClient, device: str, uploaded: dict[str, Any], measured: dict[str, float],
                           config: dict[str, Any], fragment: str) -> None:
    response = predict(api, device=device, model_id=uploaded["id"], config=config)
    assert response.status_code == 422
    assert fragment in response.json()["detail"]
    candidates = [{"name": "ok", "config": {}}, {"name": "bad", "config": config}]
    ranked = api.post("/api/rank", json={"device": device, "model_id": uploaded["id"], "candidates": candidates})
    assert ranked.status_code == 422
    assert fragment in ranked.json()["detail"]


def test_predict_error_statuses(api: TestClient, device: str, uploaded: dict[str, Any]) -> None:
    no_measurements = predict(api, device=device, model_id=uploaded["id"])
    assert no_measurements.status_code == 409
    assert "no measurements" in no_measurements.json()["detail"]
    unknown_device = predict(api, device="nope", model_id=uploaded["id"])
    assert unknown_device.status_code == 404
    assert unknown_device.json()["detail"].startswith("unknown device 'nope'")
    row = fake_measurement(uploaded["kernels"][0], 0.1)
    api.post(f"/api/devices/{device}/measurements", json={"run_id": "r", "measurements": [row]}, headers=AUTH)
    unknown_model = predict(api, device=device, model_id="f" * 64)
    assert unknown_model.status_code == 404
    assert "unknown model id" in unknown_model.json()["detail"]
    assert predict(api, device=device, model_id="../../etc/passwd").status_code == 404
    bad_shape = predict(api, device=device, model_id=uploaded["id"], input_shapes={"nope": [1, 2]})
    assert bad_shape.status_code == 422


def test_predict_falls_back_for_unmeasured_kernels(api: TestClient, device: str, uploaded: dict[str, Any]) -> None:
    row = fake_measurement(uploaded["kernels"][0], 0.1)
    api.post(f"/api/devices/{device}/measurements", json={"run_id": "r", "measurements": [row]}, headers=AUTH)
    estimate = predict(api, device=device, model_id=uploaded["id"]).json()
    assert estimate["table_hit_rate"] == pytest.approx(1 / len(uploaded["kernels"]))
    assert estimate["sources"]["table"] == 1
    assert estimate["warnings"], "a fallback prediction is always stated"
    assert all(k["latency_ms"] > 0 for k in estimate["kernels"])


def test_config_schema(api: TestClient) -> None:
    schema = api.get("/api/config-schema").json()
    assert {"default", "layers"} <= set(schema["properties"])


def gemm_rows(count: int) -> list[dict[str, Any]]:
    rows = []
    for index in range(count):
        n = 64 * (index + 1)
        key = KernelKey(op_type="Gemm", inputs=((1, 256),), outputs=((1, n),), weight=(n, 256)).to_dict()
        median = 0.01 + 0.001 * n
        rows.append({"key": key, "median_ms": median, "p10_ms": median * 0.95, "p90_ms": median * 1.05,
                     "repeats": 30})
    return rows


def wait_for_job(api: TestClient, job_id: str, timeout_s: float = 120.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = api.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("finished", "failed"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still not done after {timeout_s} s")


def test_train_is_queued_for_a_worker(api: TestClient, api_settings: Settings, device: str) -> None:
    """The web process only queues the job; a worker runs it; its state is in the store for every process."""
    api.post(f"/api/devices/{device}/measurements", json={"run_id": "r", "measurements": gemm_rows(12)},
             headers=AUTH)
    started = api.post(f"/api/devices/{device}/train", headers=AUTH)
    assert started.status_code == 202
    assert started.json()["status"] == "queued"
    job_id = started.json()["job_id"]
    time.sleep(0.5)
    assert api.get(f"/api/jobs/{job_id}").json()["status"] == "queued", "the web process runs no job"
    worker = JobWorker(api_settings, name="test-worker")
    try:
        ran = worker.run_once()
        assert worker.run_once() is None, "one job was queued"
    finally:
        worker.close()
    assert ran is not None and ran.job_id == job_id and ran.worker == "test-worker"
    job = wait_for_job(api, job_id)
    assert job["status"] == "finished", job["error"]
    assert job["attempts"] == 1 and job["started_at"] is not None
    assert "skipped" not in job["result"]["Gemm"]
    regressors = api.get(f"/api/devices/{device}").json()["regressors"]
    assert list(regressors) == ["Gemm"]
    assert regressors["Gemm"]["metrics"] == job["result"]["Gemm"]


def test_train_errors(api: TestClient, device: str) -> None:
    assert api.post(f"/api/devices/{device}/train").status_code == 401
    assert api.post("/api/devices/nope/train", headers=AUTH).status_code == 404
    assert api.get("/api/jobs/nope").status_code == 404
