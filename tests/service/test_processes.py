"""Several service processes on one PostgreSQL store: they answer alike after uploads, share uploaded models and jobs,
and a `latpred worker` runs the jobs; `latpred serve --workers N` runs N server processes and a job worker."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.server import ServerProcess, free_port, server_process, stop_process, wait_until_serving
from tests.service.conftest import AUTH, DEVICE, TOKEN, fake_measurement, local_device_body

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def _env(store_url: str, home: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATPRED_")}
    env.update(LATPRED_DATABASE_URL=store_url, LATPRED_HOME=str(home), LATPRED_API_TOKENS=TOKEN,
               LATPRED_PREDICT_WORKERS="1", LATPRED_JOB_POLL_S="0.2")
    env.update({f"LATPRED_{name.upper()}": value for name, value in settings.items()})
    return env


def _client(server: ServerProcess | str) -> httpx.Client:
    url = server if isinstance(server, str) else server.url
    return httpx.Client(base_url=url, headers=AUTH, timeout=120)


def _predict(client: httpx.Client, model_id: str) -> float:
    response = client.post("/api/predict", json={"device": DEVICE, "model_id": model_id})
    assert response.status_code == 200, response.text
    return float(response.json()["latency_ms"])


def _wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in ("finished", "failed"):
            return dict(job)
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not done after {timeout_s} s")


def _gemm_rows(count: int, scale: float = 1.0) -> list[dict[str, Any]]:
    rows = []
    for index in range(count):
        n = 64 * (index + 1)
        key = {"op_type": "Gemm", "inputs": [[1, 256]], "outputs": [[1, n]], "weight": [n, 256]}
        median = (0.01 + 0.001 * n) * scale
        rows.append({"key": key, "median_ms": median, "p10_ms": median * 0.95, "p90_ms": median * 1.05,
                     "repeats": 30})
    return rows


def test_two_server_processes_answer_alike_and_share_models_and_jobs(postgres_url: str, tmp_path: Path,
                                                                     residual_bytes: bytes) -> None:
    """Each server has its own data directory: whatever one is told, the other knows (the store holds it all)."""
    with server_process(_env(postgres_url, tmp_path / "a"), log_path=tmp_path / "a.log") as first, \
            server_process(_env(postgres_url, tmp_path / "b"), log_path=tmp_path / "b.log") as second, \
            _client(first) as a, _client(second) as b:
        assert a.post("/api/devices", json=local_device_body()).status_code == 201
        model = a.post("/api/models", files={"file": ("block.onnx", residual_bytes)}).json()
        rows = [fake_measurement(kernel, 0.1 * (i + 1)) for i, kernel in enumerate(model["kernels"])]
        assert a.post(f"/api/devices/{DEVICE}/measurements",
                      json={"run_id": "run-1", "measurements": rows}).status_code == 200
        # The model went to the first server only: the second reads its bytes from the store.
        first_answer = _predict(b, model["id"])
        assert _predict(a, model["id"]) == first_answer
        # An upload through one: both answer with it at once (each checks the store before answering).
        kernel = model["kernels"][0]
        assert b.post(f"/api/devices/{DEVICE}/measurements",
                      json={"run_id": "run-2", "measurements": [fake_measurement(kernel, 5.0)]}).status_code == 200
        expected = pytest.approx(first_answer - 0.1 + (0.1 + 5.0) / 2)
        assert _predict(a, model["id"]) == expected
        assert _predict(b, model["id"]) == expected

        # A job queued through one is seen by the other; neither runs it: a worker process does.
        assert a.post(f"/api/devices/{DEVICE}/measurements",
                      json={"run_id": "run-3", "measurements": _gemm_rows(12)}).status_code == 200
        queued = a.post(f"/api/devices/{DEVICE}/train").json()
        time.sleep(1.0)
        seen = b.get(f"/api/jobs/{queued['job_id']}").json()
        assert (seen["status"], seen["device"], seen["worker"]) == ("queued", DEVICE, None)
        worker = subprocess.run([sys.executable, "-m", "service.cli", "worker", "--once"], cwd=REPO,
                                env=_env(postgres_url, tmp_path / "w"), capture_output=True, text=True, timeout=300)
        assert worker.returncode == 0, worker.stderr
        assert worker.stdout.strip() == "ran 1 job(s)"
        done = b.get(f"/api/jobs/{queued['job_id']}").json()
        assert done["status"] == "finished", done["error"]
        assert done["worker"] is not None
        assert done["worker"].rsplit(":", 1)[1] not in (str(first.process.pid), str(second.process.pid))
        assert a.get(f"/api/jobs/{queued['job_id']}").json() == done
        # The regressors it trained reach both servers' predictors.
        assert list(b.get(f"/api/devices/{DEVICE}").json()["regressors"]) == ["Gemm"]
        unmeasured = {"device": DEVICE, "model_id": model["id"], "config": {"default": {"prune_ratio": 0.5}}}
        answers = [client.post("/api/predict", json=unmeasured).json() for client in (a, b)]
        assert answers[0]["latency_ms"] == pytest.approx(answers[1]["latency_ms"])
        assert answers[0]["sources"] == answers[1]["sources"]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@contextmanager
def _cli_serve(env: dict[str, str], *options: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port), *options],
                               cwd=REPO, env=env)
    try:
        wait_until_serving(url, process, timeout_s=90)
        yield url, process
    finally:
        stop_process(process, 30, signal.SIGINT)


def test_serve_with_several_workers_and_its_job_worker(postgres_url: str, tmp_path: Path,
                                                       residual_bytes: bytes) -> None:
    """`latpred serve --workers 2`: two server processes on one port and a job worker, all answering alike."""
    with _cli_serve(_env(postgres_url, tmp_path / "home"), "--workers", "2") as (url, process), _client(url) as api:
        children = _children(process.pid)
        # uvicorn's two server processes (and the process it watches them with) and the job worker.
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode() for pid in children}
        assert sum("worker" in command and "service.cli" in command for command in commands.values()) == 1
        servers = [pid for pid, command in commands.items() if "spawn_main" in command]
        assert len(servers) == 2, commands
        assert api.post("/api/devices", json=local_device_body()).status_code == 201
        model = api.post("/api/models", files={"file": ("block.onnx", residual_bytes)}).json()
        rows = [fake_measurement(kernel, 0.2) for kernel in model["kernels"]]
        api.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "r1", "measurements": rows})
        # Connections land on either process: every answer is the same.
        answers = set()
        for _ in range(8):
            with _client(url) as fresh:
                answers.add(round(_predict(fresh, model["id"]), 9))
        assert len(answers) == 1
        api.post(f"/api/devices/{DEVICE}/measurements", json={"run_id": "r2", "measurements": _gemm_rows(12)})
        job = _wait_for_job(api, api.post(f"/api/devices/{DEVICE}/train").json()["job_id"])
        assert job["status"] == "finished", job["error"]
    assert process.returncode is not None
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "serve's processes outlived it"
