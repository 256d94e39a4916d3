"""The regressors' baseline forms compared on an accuracy run's table: within its range and beyond it.

    .venv/bin/python benchmarks/baselines.py --home /tmp/acc7-home --out benchmarks/results/baselines_run7.json

For every op type with at least 30 measured keys in the device's table it trains the op type's regressor
(predictor.regressors.train_op_regressor: baseline and median booster) three times, with the log-log
baseline, the additive one, and the form chosen per op type as `latpred train` does, and scores each
  - on a random 20% of the keys, trained on the rest (what `latpred train` reports), and
  - on the largest 20% of the keys by MACs (by bytes moved where the op type has no MACs), trained on the
    smaller 80%: a kernel of an unseen architecture larger than anything profiled, like ViT-Base's
    768 x 3072 matmuls beside a table that holds ViT-Small's largest.
Printed per op type and summed over all keys: MAPE, share within ±10% and the median signed error.
Nothing is measured.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.features import features_matrix  # noqa: E402
from predictor.kernels import KernelKey  # noqa: E402
from predictor.regressors import kernel_size, train_op_regressor, training_sets  # noqa: E402
from predictor.store import create_store_engine, get_device, session_factory  # noqa: E402

MIN_KEYS = 30
TEST_SHARE = 0.2
FORMS: tuple[str | None, ...] = ("loglog", "additive", None)


def score(keys: list[KernelKey], latency: np.ndarray, train: np.ndarray, test: np.ndarray,
          form: str | None) -> dict[str, Any]:
    regressor, _ = train_op_regressor([keys[i] for i in train], latency[train], baseline_form=form)
    predicted = regressor.predict([keys[i] for i in test])[0]
    error = predicted / latency[test] - 1.0
    return {"mape": float(np.mean(np.abs(error))), "within_10pct": float(np.mean(np.abs(error) <= 0.10)),
            "median_error": float(np.median(error)), "form": regressor.baseline.form, "n_test": len(test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="LATPRED_HOME of an accuracy run")
    parser.add_argument("--device", default="bench-cpu-1t")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    engine = create_store_engine(f"sqlite:///{args.home / 'latpred.db'}")
    with session_factory(engine)() as session:
        by_op = training_sets(session, get_device(session, args.device))

    per_op: dict[str, Any] = {}
    for op_type, (keys, latencies_ms) in sorted(by_op.items()):
        if len(keys) < MIN_KEYS:
            continue
        latency = np.array(latencies_ms)
        size = kernel_size(features_matrix(keys))
        n_test = max(1, int(round(len(keys) * TEST_SHARE)))
        shuffled = np.random.default_rng(0).permutation(len(keys))
        by_size = np.argsort(size, kind="stable")
        splits = {"random": (shuffled[n_test:], shuffled[:n_test]),
                  "largest": (by_size[:-n_test], by_size[-n_test:])}
        per_op[op_type] = {"keys": len(keys), **{
            split: {str(form or "chosen"): score(keys, latency, train, test, form) for form in FORMS}
            for split, (train, test) in splits.items()}}
        line = "  ".join(f"{split} " + " ".join(f"{name} {r['mape']:5.1%}/{r['median_error']:+5.1%}"
                                               for name, r in per_op[op_type][split].items())
                         for split in splits)
        print(f"{op_type:24s} {len(keys):5d} keys  {line}  (chosen: {per_op[op_type]['largest']['chosen']['form']})",
              flush=True)

    summary: dict[str, dict[str, float]] = {}
    for split in ("random", "largest"):
        for form in FORMS:
            name = str(form or "chosen")
            results = [entry[split][name] for entry in per_op.values()]
            weights = np.array([r["n_test"] for r in results], dtype=np.float64)
            summary[f"{split}/{name}"] = {
                "mape": float(np.average([r["mape"] for r in results], weights=weights)),
                "within_10pct": float(np.average([r["within_10pct"] for r in results], weights=weights)),
                "median_error": float(np.median([r["median_error"] for r in results])),
            }
            print(f"{split:8s} {name:9s} MAPE {summary[f'{split}/{name}']['mape']:6.1%}  within ±10%"
                  f" {summary[f'{split}/{name}']['within_10pct']:6.1%}  median over op types of the median error"
                  f" {summary[f'{split}/{name}']['median_error']:+6.1%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"home": str(args.home), "summary": summary, "op_types": per_op}, indent=1)
                            + "\n")


if __name__ == "__main__":
    main()
