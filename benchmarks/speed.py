"""Service speed: predict latency and throughput, and ranking fresh configs, against `latpred serve` on loopback.

    .venv/bin/python -m benchmarks.speed --out benchmarks/results/speed.json

Starts a real server process on 127.0.0.1 with a SQLite store, registers this host's CPU as a device,
profiles ResNet-50 (a real torchvision export: its skeleton in data/priors, random weights) briefly so the
device has a table, uploads the model, then:
- POST /api/v1/predict for the same model and config, sequentially (p50, p99) and from 16 concurrent
  clients (requests/s), after one warm-up request;
- POST /api/v1/rank with N candidates never asked before (fresh prune ratios, bit-widths, sparsities,
  per-layer overrides), sequentially, several rounds, each with new candidates, after one first rank
  that learns the model's transformations (timed separately).
All traffic stays on loopback and every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx

from profiler.plan import DEFAULT_PRIORS_DIR
from profiler.skeleton import load_skeleton, materialize_skeleton
from service.server import server_process

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv" / "bin" / "python")
TOKEN = "bench-token"
DEVICE = "bench-cpu-1t"


def fresh_candidates(count: int, rng: random.Random, layer_names: list[str]) -> list[dict[str, Any]]:
    candidates = []
    for index in range(count):
        default: dict[str, Any] = {"prune_ratio": round(rng.uniform(0.05, 0.7), 3), "bits": rng.choice([32, 8, 16])}
        if rng.random() < 0.3:
            default["sparsity"] = round(rng.uniform(0.3, 0.95), 2)
        config: dict[str, Any] = {"default": default}
        if rng.random() < 0.5:
            layer = rng.choice(layer_names)
            config["layers"] = {layer: {"bits": 32, "prune_ratio": 0.0}}
        candidates.append({"name": f"c{index}-{rng.random():.6f}", "config": config})
    return candidates


async def concurrent_predicts(base: str, body: dict[str, Any], clients: int, seconds: float) -> dict[str, float]:
    """Clients with a token: anonymous ones are held to LATPRED_ANONYMOUS_REQUESTS_PER_MINUTE per address."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await client.post("/api/v1/predict", json=body)
                latencies.append((time.perf_counter() - start) * 1000)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {"requests": len(latencies), "errors": len(latencies) - statuses.get(200, 0), "statuses": statuses,
            "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "speed.json")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--rank-rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--profile-minutes", type=float, default=2.0)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="latpred-load-"))
    model_path = home / "resnet50.onnx"
    model = materialize_skeleton(load_skeleton(DEFAULT_PRIORS_DIR / "resnet50.json"))
    onnx.save(model, model_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")} | {
        "LATPRED_HOME": str(home), "LATPRED_API_TOKENS": TOKEN}
    subprocess.run([PYTHON, "-m", "service.cli", "profile", "--device", DEVICE, "--for-model", str(model_path),
                    "--budget-minutes", str(args.profile_minutes)], env=env, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, "-m", "service.cli", "train", "--device", DEVICE], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip(),
                              "cpus": os.cpu_count(), "model": "resnet50", "device": DEVICE}
    with server_process(env, python=PYTHON, stop_timeout_s=30) as server:
        base = server.url
        with httpx.Client(base_url=base, timeout=600, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            with model_path.open("rb") as handle:
                upload = client.post("/api/v1/models", files={"file": ("resnet50.onnx", handle)})
            upload.raise_for_status()
            model_id = upload.json()["id"]
            body = {"device": DEVICE, "model_id": model_id}
            client.post("/api/v1/predict", json=body).raise_for_status()  # warm-up: prepares the model once
            sequential = []
            for _ in range(200):
                start = time.perf_counter()
                client.post("/api/v1/predict", json=body).raise_for_status()
                sequential.append((time.perf_counter() - start) * 1000)
            result["predict_sequential"] = {"requests": len(sequential),
                                            "p50_ms": float(np.percentile(sequential, 50)),
                                            "p99_ms": float(np.percentile(sequential, 99))}
            result["predict_concurrent"] = asyncio.run(
                concurrent_predicts(base, body, args.clients, args.seconds)) | {"clients": args.clients}
            rng = random.Random(0)
            layer_names = [n.name for n in model.graph.node if n.op_type == "Conv"]
            # The first rank of a model learns its transformations once (compress a few ways, extract).
            start = time.perf_counter()
            first = body | {"candidates": fresh_candidates(1, rng, layer_names)}
            client.post("/api/v1/rank", json=first).raise_for_status()
            result["rank_first_learn_s"] = time.perf_counter() - start
            rank_ms = []
            for _ in range(args.rank_rounds):
                candidates = fresh_candidates(args.candidates, rng, layer_names)
                start = time.perf_counter()
                response = client.post("/api/v1/rank", json=body | {"candidates": candidates})
                rank_ms.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
            result["rank_fresh"] = {"candidates": args.candidates, "rounds": len(rank_ms),
                                    "p50_ms": float(np.median(rank_ms)), "all_ms": rank_ms}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
