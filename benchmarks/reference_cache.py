"""The reference kernel right after a model: how much slower it runs than on its own, per model.

    .venv/bin/python benchmarks/reference_cache.py --seconds 150 --out benchmarks/results/reference_cache.json

Paired timing (profiler.backends.onnxruntime) runs the device's reference conv after each block of a model's
runs. The model's run leaves its own weights and activations in the caches, so the reference's next run
starts cold. This script measures by how much, per model: for `--seconds` it takes each model in turn for a
one-second window (model run, then three reference runs, repeated), then ten reference runs on their own,
and reports the medians of the first, second and third reference run after the model over the reference on
its own, and the window-to-window spread of the model's ratio to each of them (how well each tracks the
host). One thread, thread CPU time, as the profiler times.
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

from predictor.compress import apply_config  # noqa: E402
from predictor.config import parse_config  # noqa: E402
from profiler.backends.base import reference_model  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend, random_feeds  # noqa: E402

MODELS = {
    "mobilenet_v3_small": ("mobilenet_v3_small", {}),
    "mobilenet_v2 int8+prune30": ("mobilenet_v2", {"default": {"bits": 8, "prune_ratio": 0.3}}),
    "resnet18": ("resnet18", {}),
    "convnext_tiny": ("convnext_tiny", {}),
}
_AFTER = 3


def _cv(values: list[float]) -> float:
    array = np.asarray(values)
    return float(array.std() / array.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "reference_cache.json")
    args = parser.parse_args()

    backend = OnnxRuntimeBackend(threads=1)
    sessions = {"reference": backend._session(reference_model())}
    for label, (arch, config) in MODELS.items():
        sessions[label] = backend._session(apply_config(zoo.build_model(arch, image_size=224), parse_config(config)))
    feeds = {name: random_feeds(session) for name, session in sessions.items()}
    for name, session in sessions.items():
        for _ in range(5):
            session.run(None, feeds[name])

    def timed_ms(name: str) -> float:
        begin = time.thread_time()
        sessions[name].run(None, feeds[name])
        return (time.thread_time() - begin) * 1000.0

    windows: dict[str, list[dict[str, float]]] = {label: [] for label in MODELS}
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        for label in MODELS:
            runs: list[float] = []
            after: list[list[float]] = [[] for _ in range(_AFTER)]
            window_start = time.perf_counter()
            while time.perf_counter() - window_start < 1.0:
                runs.append(timed_ms(label))
                for position in range(_AFTER):
                    after[position].append(timed_ms("reference"))
            alone = float(np.median([timed_ms("reference") for _ in range(10)]))
            window = {"run_ms": float(np.median(runs)), "alone_ms": alone}
            for position in range(_AFTER):
                window[f"after{position + 1}_ms"] = float(np.median(after[position]))
                window[f"ratio{position + 1}"] = float(np.median(np.array(runs) / np.array(after[position])))
            windows[label].append(window)

    result: dict[str, object] = {"seconds": args.seconds, "models": {}}
    for label, rows in windows.items():
        entry: dict[str, float] = {"windows": float(len(rows)), "run_ms": float(np.median([r["run_ms"] for r in rows])),
                                   "reference_alone_ms": float(np.median([r["alone_ms"] for r in rows]))}
        for position in range(1, _AFTER + 1):
            entry[f"after{position}_over_alone"] = float(np.median([r[f"after{position}_ms"] / r["alone_ms"]
                                                                    for r in rows]))
            entry[f"ratio{position}_window_cv"] = _cv([r[f"ratio{position}"] for r in rows])
        entry["run_window_cv"] = _cv([r["run_ms"] for r in rows])
        result["models"][label] = entry  # type: ignore[index]
        print(f"{label:26s} run {entry['run_ms']:8.3f} ms (window cv {entry['run_window_cv'] * 100:4.1f}%) | reference"
              f" after it x{entry['after1_over_alone']:.3f} / x{entry['after2_over_alone']:.3f} /"
              f" x{entry['after3_over_alone']:.3f} of alone | ratio window cv {entry['ratio1_window_cv'] * 100:.1f}% /"
              f" {entry['ratio2_window_cv'] * 100:.1f}% / {entry['ratio3_window_cv'] * 100:.1f}%", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
