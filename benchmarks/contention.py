"""How much busy neighbours move a measurement: wall time vs the thread CPU time the profiler uses.

    .venv/bin/python benchmarks/contention.py --out benchmarks/results/contention.json

Times each model (benchmarks/zoo.py, 224x224, 1 thread) with the onnxruntime backend's two clocks,
alternating idle rounds and rounds with N busy processes spinning on every core, and reports the
median of each clock per state and their ratio loaded/idle.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402  (a script's own folder is on sys.path when it runs)

from profiler.backends.onnxruntime import OnnxRuntimeBackend, random_feeds  # noqa: E402


def _spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


def _time_runs(session: object, feeds: dict[str, np.ndarray], runs: int) -> tuple[list[float], list[float]]:
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.thread_time()
        session.run(None, feeds)  # type: ignore[attr-defined]
        cpu.append((time.thread_time() - c0) * 1000)
        wall.append((time.perf_counter() - w0) * 1000)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="resnet18,mobilenet_v2,vit_tiny")
    parser.add_argument("--neighbours", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "contention.json")
    args = parser.parse_args()
    backend = OnnxRuntimeBackend(threads=1)
    results = []
    for name in args.archs.split(","):
        session = backend._session(zoo.build_model(name))
        feeds = random_feeds(session)
        _time_runs(session, feeds, 5)
        samples: dict[str, dict[str, list[float]]] = {"idle": {"wall": [], "cpu": []},
                                                      "loaded": {"wall": [], "cpu": []}}
        for _ in range(args.rounds):
            for state in ("idle", "loaded"):
                workers = []
                if state == "loaded":
                    stop_at = time.time() + 120
                    workers = [multiprocessing.Process(target=_spin, args=(stop_at,), daemon=True)
                               for _ in range(args.neighbours)]
                    for worker in workers:
                        worker.start()
                    time.sleep(0.5)
                wall, cpu = _time_runs(session, feeds, args.runs)
                for worker in workers:
                    worker.terminate()
                    worker.join()
                samples[state]["wall"] += wall
                samples[state]["cpu"] += cpu
        row: dict[str, object] = {"model": name, "runs_per_state": args.runs * args.rounds}
        for clock in ("wall", "cpu"):
            idle, loaded = (float(np.median(samples[s][clock])) for s in ("idle", "loaded"))
            row[clock] = {"idle_ms": round(idle, 3), "loaded_ms": round(loaded, 3), "ratio": round(loaded / idle, 3)}
        print(json.dumps(row), flush=True)
        results.append(row)
    document = {"neighbours": args.neighbours, "cores": os.cpu_count(), "rows": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=1) + "\n")


if __name__ == "__main__":
    main()
