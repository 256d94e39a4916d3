"""A context correction tried on an accuracy run's table, offline: would it have helped?

    .venv/bin/python benchmarks/context_correction.py --home /tmp/acc5-home \
        --results benchmarks/results/accuracy_run5.json --out benchmarks/results/context_correction_run5.json

benchmarks/context.py shows memory-bound kernels running slower inside models whose data evicts theirs from
the cache. This script tries the simplest correction of that on a finished accuracy run, with its table and
its measurements (nothing is measured again; the kernels of each validated model and config are extracted
again, which for int8 runs the quantizer):

- a model's context is its data traffic per run, D = the sum of its kernels' bytes moved (features.py);
- a table entry's context is that of the first profiled model that holds its key (the run report's
  end-to-end samples, in order: the profiler writes a key's row from the first model that measures it); a
  regressor's or fallback's value gets the median context of the table;
- a kernel's sensitivity s falls from 1 at an arithmetic intensity of 1 MAC per byte (a depthwise conv:
  1.1) to 0 at 30 (a dense 3x3 conv: 34), in log;
- each kernel is scaled by (1 + beta s phi(D_model)) / (1 + beta s phi(D_entry)), phi(D) = max(0, log2(D/D0)).

It prints the accuracy benchmark's summaries for a grid of beta and D0 (beta 0 is the run as it was). The
grid is chosen on the validation set itself, so its best row flatters the correction: what it can show is
whether any setting helps both fp32 and compressed models.
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
import zoo  # noqa: E402

from predictor.config import parse_config  # noqa: E402
from predictor.context import sensitivity as context_sensitivity  # noqa: E402
from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.features import FEATURE_NAMES, features_matrix  # noqa: E402
from predictor.kernels import Kernel, KernelKey  # noqa: E402
from predictor.prepared import PreparedModel  # noqa: E402
from predictor.store import create_store_engine, get_device, iter_measured_medians, list_runs, session_factory  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402

_BYTES = FEATURE_NAMES.index("bytes_moved")
_MACS = FEATURE_NAMES.index("macs")
BETAS = (0.0, 0.05, 0.1, 0.2, 0.3)
BASES_MB = (2.0, 8.0, 32.0)


def sensitivity(kernel_features: np.ndarray) -> np.ndarray:
    """predictor.context's sensitivity (the same ramp this script introduced) of each row of features."""
    return context_sensitivity(kernel_features[:, _BYTES], kernel_features[:, _MACS])


def summary(errors: list[tuple[dict[str, Any], float]], keep: Any) -> str:
    values = np.array([abs(error) for row, error in errors if keep(row)])
    return f"{np.mean(values <= 0.10):4.0%} / {np.mean(values):4.1%}"


def main() -> None:
    args = accuracy.finished_run_arguments(__doc__).parse_args()

    engine = create_store_engine(f"sqlite:///{args.home / 'latpred.db'}")
    with session_factory(engine)() as session:
        device = get_device(session, args.device)
        predictor = DevicePredictor.load(session, device)
        keys: dict[str, KernelKey] = {}
        for key_hash, key, _ in iter_measured_medians(session, device):
            keys.setdefault(key_hash, KernelKey.from_dict(key))
        samples = [sample for run in list_runs(session, device) for sample in (run.report or {}).get("end_to_end", [])]
    hashes = list(keys)
    moved = dict(zip(hashes, features_matrix([keys[h] for h in hashes], cached=False)[:, _BYTES], strict=True))
    context: dict[str, float] = {}
    for sample in samples:
        traffic = sum(moved[h] for h in sample["kernel_hashes"])
        for key_hash in sample["kernel_hashes"]:
            context.setdefault(key_hash, traffic)
    median_context = float(np.median(list(context.values())))

    runtime = OnnxRuntimeBackend(threads=1).runtime()
    prepared: dict[str, PreparedModel] = {}
    cases = []
    for row in json.loads(args.results.read_text())["rows"]:
        if row["model"] not in prepared:
            prepared[row["model"]] = PreparedModel.create(zoo.build_model(row["model"], image_size=224), runtime)
        config = parse_config(accuracy.VARIANTS.get(row["config"], {}))
        kernels: list[Kernel] = prepared[row["model"]].kernels(config)
        estimate = predictor.estimate(kernels)
        kernel_features = features_matrix([k.key for k in kernels], cached=False)
        entry_context = np.array([context.get(k.key_hash, median_context) if k.source == "table" else median_context
                                  for k in estimate.kernels])
        cases.append((row, np.array([k.latency_ms for k in estimate.kernels]), sensitivity(kernel_features),
                      float(kernel_features[:, _BYTES].sum()), entry_context))

    overhead = predictor.overhead
    grid = []
    for base_mb in BASES_MB:
        for beta in BETAS:
            if beta == 0.0 and base_mb != BASES_MB[0]:
                continue
            errors = []
            for row, values, sens, traffic, entry_context in cases:
                phi_model = max(0.0, np.log2(traffic / (base_mb * 1e6)))
                phi_entry = np.maximum(0.0, np.log2(entry_context / (base_mb * 1e6)))
                corrected = values * (1 + beta * sens * phi_model) / (1 + beta * sens * phi_entry)
                total = (overhead.get("kernel_scale", 1.0) * corrected.sum() + overhead.get("per_run_ms", 0.0)
                         + overhead.get("per_kernel_ms", 0.0) * len(values))
                truth = row["compensated_measured_ms"] or row["measured_ms"]
                errors.append((row, total / truth - 1.0))
            line = {"beta": beta, "base_mb": base_mb,
                    "fp32": summary(errors, lambda r: r["config"] == "fp32"),
                    "compressed": summary(errors, lambda r: r["config"] != "fp32"),
                    "held_out": summary(errors, lambda r: r["held_out"]),
                    "profiled": summary(errors, lambda r: not r["held_out"]),
                    "outside_10pct": {f"{r['model']} {r['config']}": round(float(e) * 100, 1)
                                      for r, e in errors if abs(e) > 0.10}}
            grid.append(line)
            print(f"beta {beta:4.2f}  D0 {base_mb:4.0f} MB   within ±10% / MAPE: fp32 {line['fp32']}  compressed"
                  f" {line['compressed']}  held-out {line['held_out']}  profiled {line['profiled']}", flush=True)
            print("    outside ±10%: " + ", ".join(f"{name} {error:+.1f}%"
                                                 for name, error in line["outside_10pct"].items()), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"median_context_mb": median_context / 1e6, "grid": grid}, indent=1) + "\n")


if __name__ == "__main__":
    main()
