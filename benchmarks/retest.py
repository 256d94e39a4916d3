"""The host's noise floor: the same model measured twice, at profile time and at validation time.

    .venv/bin/python benchmarks/retest.py --home /tmp/acc-home --results benchmarks/results/accuracy_run5.json \
        --out benchmarks/results/retest_run5.json

The accuracy benchmark (benchmarks/accuracy.py) profiles the priors at 224x224 under the configs it later
validates (resnet18 fp32, int8, prune30, ...), so several of its validation models were measured end to end
twice: once by the profiler (its run report's end-to-end samples, scaled to the device's baseline by the
paired reference runs) and once by the validation (scaled the same way), tens of minutes apart. Their
difference is what a perfect predictor of the profile-time measurements would still show as its error: the
part of the benchmark's error that is the host's, not the predictor's. Reads the accuracy run's home and
its results JSON; measures nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402

from predictor.store import create_store_engine, get_device, list_runs, session_factory  # noqa: E402

# The profiler's prior config names for the accuracy benchmark's variants (profiler/plan.py, accuracy.py).
PROFILE_CONFIG = {"fp32": "fp32", "int8": "int8", "prune30": "prune30", "int8+prune30": "int8_prune30",
                  "prune50_r8": "prune50_r8", "sparse2:4": "sparse2of4"}


def share_within(values: np.ndarray, bound: float) -> float:
    return float(np.mean(np.abs(values) <= bound)) if len(values) else 0.0


def main() -> None:
    args = accuracy.finished_run_arguments(__doc__).parse_args()

    engine = create_store_engine(f"sqlite:///{args.home / 'latpred.db'}")
    profiled: dict[str, float] = {}
    with session_factory(engine)() as session:
        for run in list_runs(session, get_device(session, args.device)):
            for sample in (run.report or {}).get("end_to_end", []):
                profiled.setdefault(sample["label"], float(sample["measured_ms"]))

    matched: list[dict[str, Any]] = []
    for row in json.loads(args.results.read_text())["rows"]:
        label = f"{row['model']}_224/{PROFILE_CONFIG.get(row['config'], row['config'])}"
        validation_ms = row.get("compensated_measured_ms") or row["measured_ms"]
        if label not in profiled:
            continue
        matched.append({"model": row["model"], "config": row["config"], "profile_ms": profiled[label],
                        "validation_ms": validation_ms,
                        "retest": profiled[label] / validation_ms - 1.0, "prediction_error": row["error"],
                        "table_hit_rate": row["table_hit_rate"]})
    retest = np.array([m["retest"] for m in matched])
    prediction = np.array([m["prediction_error"] for m in matched])
    summary = {
        "models": len(matched),
        "retest_within_5pct": share_within(retest, 0.05), "retest_within_10pct": share_within(retest, 0.10),
        "retest_mape": float(np.mean(np.abs(retest))) if len(retest) else 0.0,
        "prediction_within_10pct": share_within(prediction, 0.10),
        "prediction_mape": float(np.mean(np.abs(prediction))) if len(prediction) else 0.0,
    }
    for m in matched:
        print(f"{m['model']:20s} {m['config']:13s} profile {m['profile_ms']:8.3f} ms  validation"
              f" {m['validation_ms']:8.3f} ms  retest {m['retest'] * 100:+6.1f}%  prediction"
              f" {m['prediction_error'] * 100:+6.1f}%  (table hits {m['table_hit_rate']:.0%})")
    print(f"{summary['models']} models measured twice: retest within ±10% {summary['retest_within_10pct']:.0%}"
          f" (MAPE {summary['retest_mape']:.1%}); prediction within ±10% {summary['prediction_within_10pct']:.0%}"
          f" (MAPE {summary['prediction_mape']:.1%})")
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "models": matched}, indent=1) + "\n")


if __name__ == "__main__":
    main()
