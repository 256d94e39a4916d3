"""Paired timing: how much of a shared host's unsteadiness the reference kernel takes out.

    .venv/bin/python benchmarks/pairing.py --seconds 60 --out benchmarks/results/pairing.json

Builds a few architectures of benchmarks/zoo.py, then for `--seconds` runs the device's reference conv and each
model in turn (one thread, thread CPU time, as the profiler does). Per model: the coefficient of variation of its
run times and of each run's ratio to the reference run before it, the medians of both over the first and second
halves, and the ratio's median in the host's fast and slow spells (runs whose reference run is in the fastest
and slowest 30%). A ratio steadier than the raw time is what paired timing (profiler.backends.onnxruntime)
relies on; a ratio that differs between spells is what is left of the host in a scaled measurement.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

from profiler.backends.base import reference_model  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend, random_feeds  # noqa: E402


def _share(values: np.ndarray) -> float:
    return float(values.std() / values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--archs", default="resnet18,mobilenet_v2,vit_tiny")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pairing.json")
    args = parser.parse_args()

    backend = OnnxRuntimeBackend(threads=1)
    names = args.archs.split(",")
    sessions = {"reference": backend._session(reference_model())}
    for name in names:
        sessions[name] = backend._session(zoo.build_model(name, image_size=224))
    feeds = {name: random_feeds(session) for name, session in sessions.items()}
    for name, session in sessions.items():
        for _ in range(3):
            session.run(None, feeds[name])
    times: dict[str, list[float]] = {name: [] for name in sessions}
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        for name, session in sessions.items():
            begin = time.thread_time()
            session.run(None, feeds[name])
            times[name].append((time.thread_time() - begin) * 1000.0)
    reference = np.array(times["reference"])
    fast, slow = reference < np.percentile(reference, 30), reference > np.percentile(reference, 70)
    result = {"seconds": args.seconds, "rounds": int(reference.size),
              "reference": {"median_ms": float(np.median(reference)), "p10_ms": float(np.percentile(reference, 10)),
                            "p90_ms": float(np.percentile(reference, 90)), "cv": _share(reference)},
              "models": {}}
    for name in names:
        runs = np.array(times[name])
        ratios = runs / reference
        half = runs.size // 2
        result["models"][name] = {
            "median_ms": float(np.median(runs)), "cv": _share(runs), "ratio_median": float(np.median(ratios)),
            "ratio_cv": _share(ratios), "correlation_with_reference": float(np.corrcoef(runs, reference)[0, 1]),
            "median_ms_halves": [float(np.median(runs[:half])), float(np.median(runs[half:]))],
            "ratio_halves": [float(np.median(ratios[:half])), float(np.median(ratios[half:]))],
            "ratio_fast_spells": float(np.median(ratios[fast])), "ratio_slow_spells": float(np.median(ratios[slow])),
        }
        entry = result["models"][name]
        print(f"{name:14s} run {entry['median_ms']:8.3f} ms cv {entry['cv']:.3f} | ratio {entry['ratio_median']:.3f} "
              f"cv {entry['ratio_cv']:.3f} | ratio fast/slow spells {entry['ratio_fast_spells']:.3f}/"
              f"{entry['ratio_slow_spells']:.3f}", flush=True)
    print(f"reference conv {result['reference']['median_ms']:.3f} ms (p10 {result['reference']['p10_ms']:.3f}, "
          f"p90 {result['reference']['p90_ms']:.3f}, cv {result['reference']['cv']:.3f}), {result['rounds']} rounds")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
