"""Bounded soak on loopback: 16 clients mix predict, rank and measurement uploads for a fixed time.

    .venv/bin/python -m benchmarks.soak --seconds 300 --out benchmarks/results/soak.json

Starts `run_server` in its own process on 127.0.0.1 with a temporary LATPRED_HOME (SQLite) and a token,
profiles a real export (MobileNetV2: its skeleton in data/priors, random weights) into the device `soak-cpu`
(`latpred profile --for-model`, then `train`),
uploads the model, and runs N asyncio clients until the time is up. Each request is, at random:
- 70% POST /api/v1/predict of the uploaded model (uncompressed or one of a few fixed configs),
- 10% POST /api/v1/rank with 5 configs never asked before,
- 20% POST /api/v1/devices/{device}/measurements: a new run with a fresh batch of fake but valid rows
  (kernel keys no model has, so predictions stay comparable). With `--upload-to same` (default) they go
  to the device being predicted, so each insert drops its cached predictor; `--upload-to other` sends
  them to a second device, as agents profiling other hardware would.
Reported: per request type p50/p99 (whole run, first and last tenth), status counts and transport
errors, requests/s, and the server's RSS sampled every 10 s (first, last, max, growth over the last
half). Everything stays on loopback; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx

from profiler.plan import DEFAULT_PRIORS_DIR
from profiler.skeleton import load_skeleton, materialize_skeleton
from service.server import server_process

logger = logging.getLogger("soak")

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TOKEN = "soak-token"
DEVICE = "soak-cpu"
AGENT_DEVICE = "soak-agent"
RSS_INTERVAL_S = 10.0
KINDS = ("predict", "rank", "upload")
WEIGHTS = (0.7, 0.1, 0.2)
FIXED_CONFIGS: list[dict[str, Any] | None] = [None, {"default": {"bits": 8}}, {"default": {"prune_ratio": 0.3}},
                                              {"default": {"sparsity": 0.5}}]
ROWS_PER_UPLOAD = 20
RANK_CANDIDATES = 5


def read_rss_mb(pid: int) -> float | None:
    """Resident set size of a process in MiB (psutil when installed, else /proc/PID/status VmRSS)."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process(pid).memory_info().rss) / 2**20
    except ImportError:
        pass
    except Exception:  # the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def fresh_candidates(rng: random.Random, layer_names: list[str], count: int) -> list[dict[str, Any]]:
    """Configs never asked before: random prune ratios, bit-widths, sparsities and a per-layer override."""
    candidates = []
    for index in range(count):
        default: dict[str, Any] = {"prune_ratio": round(rng.uniform(0.05, 0.7), 4), "bits": rng.choice([32, 16, 8])}
        if rng.random() < 0.3:
            default["sparsity"] = round(rng.uniform(0.3, 0.95), 3)
        config: dict[str, Any] = {"default": default}
        if layer_names and rng.random() < 0.5:
            config["layers"] = {rng.choice(layer_names): {"bits": 32, "prune_ratio": 0.0}}
        candidates.append({"name": f"c{index}-{rng.random():.9f}", "config": config})
    return candidates


def fake_batch(rng: random.Random, serial: int) -> list[dict[str, Any]]:
    """Plausible rows of Gemm kernels with shapes no model here has (k >= 10007), unique per batch."""
    rows = []
    for index in range(ROWS_PER_UPLOAD):
        n = 8 + (serial * ROWS_PER_UPLOAD + index) % 4096
        k = 10007 + serial // 200
        median = rng.uniform(0.01, 2.0)
        key = {"op_type": "Gemm", "inputs": [[1, k]], "outputs": [[1, n]], "weight": [n, k]}
        rows.append({"key": key, "median_ms": median, "p10_ms": median * 0.9, "p90_ms": median * 1.15,
                     "repeats": 50})
    return rows


@dataclass
class Recorder:
    started: float = field(default_factory=time.perf_counter)
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, kind: str, latency_ms: float, outcome: str) -> None:
        self.samples[kind].append((time.perf_counter() - self.started, latency_ms))
        self.statuses[kind][outcome] += 1


def percentiles(latencies: list[float]) -> dict[str, float | int]:
    if not latencies:
        return {"count": 0}
    return {"count": len(latencies), "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies, 99)), 2), "max_ms": round(max(latencies), 2)}


async def client_loop(index: int, base: str, deadline: float, model_id: str, layer_names: list[str],
                      recorder: Recorder, serials: list[int], upload_device: str) -> None:
    rng = random.Random(1000 + index)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, timeout=120, headers=headers) as client:
        while time.perf_counter() < deadline:
            kind = rng.choices(KINDS, WEIGHTS)[0]
            request: tuple[str, dict[str, Any]]
            if kind == "predict":
                request = ("/api/v1/predict", {"device": DEVICE, "model_id": model_id,
                                            "config": rng.choice(FIXED_CONFIGS)})
            elif kind == "rank":
                request = ("/api/v1/rank", {"device": DEVICE, "model_id": model_id,
                                         "candidates": fresh_candidates(rng, layer_names, RANK_CANDIDATES)})
            else:
                serials[0] += 1
                serial = serials[0]
                request = (f"/api/v1/devices/{upload_device}/measurements",
                           {"run_id": f"soak-{index}-{serial}", "measurements": fake_batch(rng, serial)})
            start = time.perf_counter()
            try:
                response = await client.post(request[0], json=request[1])
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            recorder.add(kind, (time.perf_counter() - start) * 1000, outcome)


async def sample_rss(pid: int, deadline: float, samples: list[tuple[float, float]], started: float) -> None:
    while True:
        rss = read_rss_mb(pid)
        if rss is not None:
            samples.append((round(time.perf_counter() - started, 1), round(rss, 1)))
        if time.perf_counter() >= deadline:
            return
        await asyncio.sleep(min(RSS_INTERVAL_S, max(0.0, deadline - time.perf_counter())))


async def soak(base: str, pid: int, seconds: float, clients: int, model_id: str, layer_names: list[str],
               upload_device: str) -> dict[str, Any]:
    recorder = Recorder()
    rss: list[tuple[float, float]] = []
    deadline = time.perf_counter() + seconds
    serials = [0]
    await asyncio.gather(
        sample_rss(pid, deadline, rss, recorder.started),
        *(client_loop(i, base, deadline, model_id, layer_names, recorder, serials, upload_device)
          for i in range(clients)),
    )
    elapsed = time.perf_counter() - recorder.started
    tenth = seconds / 10
    per_type: dict[str, Any] = {}
    for kind in KINDS:
        samples = recorder.samples.get(kind, [])
        statuses = dict(recorder.statuses.get(kind, Counter()))
        ok = sum(count for outcome, count in statuses.items() if outcome.startswith("2"))
        per_type[kind] = {
            **percentiles([latency for _, latency in samples]),
            "first_tenth": percentiles([latency for at, latency in samples if at < tenth]),
            "last_tenth": percentiles([latency for at, latency in samples if at >= seconds - tenth]),
            "statuses": statuses,
            "errors": sum(statuses.values()) - ok,
        }
    total = sum(len(samples) for samples in recorder.samples.values())
    values = [value for _, value in rss]
    half = [value for at, value in rss if at >= seconds / 2]
    return {
        "elapsed_s": round(elapsed, 1),
        "requests": total,
        "requests_per_s": round(total / elapsed, 1),
        "errors": sum(entry["errors"] for entry in per_type.values()),
        "per_type": per_type,
        "server_rss_mb": {
            "first": values[0] if values else None,
            "last": values[-1] if values else None,
            "max": max(values) if values else None,
            "growth_last_half": round(half[-1] - half[0], 1) if len(half) >= 2 else None,
            "samples": rss,
        },
    }


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the report
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--model", default="mobilenet_v2",
                        help="a real export's skeleton in data/priors (random weights)")
    parser.add_argument("--profile-minutes", type=float, default=1.0)
    parser.add_argument("--upload-to", choices=["same", "other"], default="same",
                        help="upload measurements to the predicted device or to a second one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "soak.json")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="latpred-soak-"))
    model_path = home / f"{args.model}.onnx"
    model = materialize_skeleton(load_skeleton(DEFAULT_PRIORS_DIR / f"{args.model}.json"))
    onnx.save(model, model_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")} | {
        "LATPRED_HOME": str(home), "LATPRED_API_TOKENS": TOKEN}
    logger.info("profiling %s into %s for %.1f min (home %s)", args.model, DEVICE, args.profile_minutes, home)
    subprocess.run([PYTHON, "-m", "service.cli", "profile", "--device", DEVICE, "--for-model", str(model_path),
                    "--budget-minutes", str(args.profile_minutes)], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, "-m", "service.cli", "train", "--device", DEVICE], env=env, cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    result: dict[str, Any] = {
        "model": args.model, "device": DEVICE, "clients": args.clients, "seconds": args.seconds,
        "mix": dict(zip(KINDS, WEIGHTS, strict=True)), "rows_per_upload": ROWS_PER_UPLOAD,
        "rank_candidates": RANK_CANDIDATES, "cpu_count": os.cpu_count(), "upload_to": args.upload_to,
    }
    upload_device = DEVICE if args.upload_to == "same" else AGENT_DEVICE
    with server_process(env, python=PYTHON, stop_timeout_s=30) as served:
        server, base = served.process, served.url
        with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            with model_path.open("rb") as handle:
                upload = client.post("/api/v1/models", files={"file": (model_path.name, handle)})
            upload.raise_for_status()
            model_id = upload.json()["id"]
            result["kernels"] = len(upload.json()["kernels"])
            # Warm-up: prepare the model and learn its fast config path once, outside the measured time.
            client.post("/api/v1/predict", json={"device": DEVICE, "model_id": model_id}).raise_for_status()
            layer_names = [node.name for node in model.graph.node if node.op_type == "Conv"]
            client.post("/api/v1/rank", json={"device": DEVICE, "model_id": model_id,
                                           "candidates": fresh_candidates(random.Random(0), layer_names, 2)}
                        ).raise_for_status()
            if upload_device != DEVICE:
                device = client.get(f"/api/v1/devices/{DEVICE}").json()
                fields = ("backend", "execution_provider", "runtime_version", "threads", "host")
                client.post("/api/v1/devices", json={"name": upload_device, **{f: device[f] for f in fields}}
                            ).raise_for_status()
            stored_before = client.get(f"/api/v1/devices/{upload_device}").json()["measurement_count"]
            logger.info("soak: %d clients for %.0f s against %s", args.clients, args.seconds, base)
            result |= asyncio.run(soak(base, server.pid, args.seconds, args.clients, model_id, layer_names,
                                       upload_device))
            stored_after = client.get(f"/api/v1/devices/{upload_device}").json()["measurement_count"]
            uploads_ok = int(result["per_type"]["upload"]["statuses"].get("200", 0))
            result["measurements"] = {"before": stored_before, "after": stored_after,
                                      "expected_after": stored_before + uploads_ok * ROWS_PER_UPLOAD}
            result["server_alive"] = server.poll() is None and client.get("/api/health").status_code == 200
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
