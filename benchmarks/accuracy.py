"""Accuracy benchmark: predicted vs measured latency on real architectures and compressed variants.

    .venv/bin/python benchmarks/accuracy.py --budget-minutes 30 --out benchmarks/results/accuracy.json

1. profiles this machine (1 thread) with `latpred profile --budget-minutes N` (the default op space:
   priors from data/priors, then random variants), then `latpred train`;
2. exports every architecture of benchmarks/zoo.py at 224x224 and measures it end to end (fp32),
   plus int8 / pruned / int8+pruned / 2:4-sparse variants of several;
3. compares each prediction with its measurement, and puts the FLOPs proxy beside it (latency = c x MACs,
   c fitted on the same fp32 set by least squares on relative error: the proxy gets every advantage).

This host is a shared VM whose speed swings by tens of percent within minutes, the thread CPU time too (a
busy neighbour of the VM slows the VM itself). The profiler and the measurements here time each model's runs
in pairs with runs of the device's reference kernel and scale them to the device's baseline state (the
reference kernel's time when the device was first profiled): "compensated" figures are held against those,
the "_raw" summaries against the unscaled measurements.

Architectures whose skeletons are in data/priors were profiled as whole models; the others (`held_out`)
were never seen by the profiler, so their kernels come partly from regressors.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402  (a script's own folder is on sys.path when it runs)

from predictor.config import parse_config  # noqa: E402
from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.prepared import PreparedModel  # noqa: E402
from predictor.store import create_store_engine, get_device, session_factory  # noqa: E402
from predictor.validation import measure_against_table, summarize_validation, validation_row  # noqa: E402
from profiler.backends.base import GROUND_TRUTH_PROTOCOL  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from profiler.calibration import calibrate_by_default  # noqa: E402
from profiler.runner import measure_reference_ms  # noqa: E402

DEVICE = "bench-cpu-1t"
VARIANTS = {
    "int8": {"default": {"bits": 8}},
    "prune30": {"default": {"prune_ratio": 0.3}},
    "int8+prune30": {"default": {"bits": 8, "prune_ratio": 0.3}},
    "prune50_r8": {"default": {"prune_ratio": 0.5, "round_to": 8}},
    "sparse2:4": {"default": {"sparsity_pattern": "2:4"}},
}
COMPRESSED_ARCHS = ["resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
                    "mnasnet1_0", "regnet_x_800mf", "vit_tiny"]


def latpred(*args: str, env: dict[str, str]) -> None:
    command = [str(ROOT / ".venv" / "bin" / "latpred"), *args]
    print("$ latpred " + " ".join(args), flush=True)
    subprocess.run(command, env=env, check=True)


def macs_of(model: Any) -> float:
    _, macs = zoo.model_stats(model)
    return float(macs)


def summarize(rows: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The benchmark's summaries of its rows, and the FLOPs proxy's fitted ms per GMAC."""
    fp32 = [r for r in rows if r["config"] == "fp32"]
    compressed = [r for r in rows if r["config"] != "fp32"]
    # FLOPs proxy: latency = c x MACs; c minimises the squared relative error over the fp32 set.
    truth = [r["compensated_measured_ms"] or r["measured_ms"] for r in fp32]
    ratios = np.array([t / r["macs"] for t, r in zip(truth, fp32, strict=True)])
    c = float(np.sum(ratios) / np.sum(ratios ** 2)) if len(ratios) else 0.0
    c = 1.0 / c if c else 0.0
    proxy_rows = [{**r, "predicted_ms": c * r["macs"]} for r in fp32]
    summary = {
        "fp32_raw": summarize_validation(fp32, compensated=False),
        "compressed_raw": summarize_validation(compressed, compensated=False),
        "fp32": summarize_validation(fp32),
        "fp32_prior_archs": summarize_validation([r for r in fp32 if not r["held_out"]]),
        "fp32_held_out_archs": summarize_validation([r for r in fp32 if r["held_out"]]),
        "compressed": summarize_validation(compressed),
        "ranking_of_variants": summarize_validation([r for r in rows if r["model"] in COMPRESSED_ARCHS]),
        "flops_proxy_fp32": summarize_validation(proxy_rows),
    }
    return summary, c * 1e9


def finished_run_arguments(description: str | None) -> argparse.ArgumentParser:
    """The arguments of the scripts that work on a finished accuracy run: its home and results."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="LATPRED_HOME of an accuracy run")
    parser.add_argument("--results", type=Path, required=True, help="that run's results JSON")
    parser.add_argument("--device", default=DEVICE)
    parser.add_argument("--out", type=Path, default=None)
    return parser


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--home", type=Path, default=None, help="LATPRED_HOME to use (default: a fresh temp dir)")
    parser.add_argument("--skip-profile", action="store_true", help="reuse the table already in --home")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy.json")
    parser.add_argument("--archs", default="", help="comma-separated subset of the zoo (default: all)")
    parser.add_argument("--context-calibration", action=argparse.BooleanOptionalAction, default=None,
                        help="pass --context-calibration or --no-context-calibration to latpred profile (default: "
                             "neither, so its default: the context probes with a budget of 5 minutes or more)")
    parser.add_argument("--no-refinement", action="store_true",
                        help="pass --no-refinement to latpred profile (random variants after the priors)")
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="latpred-accuracy-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")} | {"LATPRED_HOME": str(home)}
    started = time.time()
    if not args.skip_profile:
        latpred("profile", "--device", DEVICE, "--backend", "onnxruntime", "--threads", "1",
                "--budget-minutes", str(args.budget_minutes),
                *({True: ["--context-calibration"], False: ["--no-context-calibration"], None: []}
                  [args.context_calibration]), *(["--no-refinement"] if args.no_refinement else []), env=env)
    latpred("train", "--device", DEVICE, env=env)
    profile_minutes = (time.time() - started) / 60

    engine = create_store_engine(f"sqlite:///{home / 'latpred.db'}")
    with session_factory(engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, DEVICE))
    backend = OnnxRuntimeBackend(threads=1)
    runtime = backend.runtime()
    protocol = GROUND_TRUTH_PROTOCOL
    priors = json.loads((ROOT / "data" / "priors" / "index.json").read_text())
    prior_archs = {entry["architecture"] for entry in priors["priors"]}
    names = args.archs.split(",") if args.archs else list(zoo.ARCHITECTURES)

    rows: list[dict[str, Any]] = []
    for name in names:
        model = zoo.build_model(name, image_size=224)
        prepared = PreparedModel.create(model, runtime)
        configs = [("fp32", {})] + ([(v, c) for v, c in VARIANTS.items()] if name in COMPRESSED_ARCHS else [])
        for config_name, raw in configs:
            config = parse_config(raw)
            estimate = predictor.estimate(prepared.kernels(config))
            compressed = prepared.compressed(config)
            measured, scaled, reference_now, reference = measure_against_table(
                backend, compressed, protocol, predictor.reference_baselines, lambda: measure_reference_ms(backend))
            row = validation_row(name, config_name, estimate.latency_ms, measured, scaled,
                                 estimate.table_hit_rate, list(estimate.interval_ms))
            row |= {"held_out": name not in prior_archs, "sources": estimate.sources, "reference_ms": reference_now,
                    "reference": reference,
                    "macs": macs_of(model) if config_name == "fp32" else None}
            rows.append(row)
            print(f"{name:22s} {config_name:14s} predicted {estimate.latency_ms:9.3f} ms  measured {measured:9.3f} ms"
                  f" (compensated {row['compensated_measured_ms'] or measured:9.3f})  error {row['error'] * 100:+6.1f}%"
                  f" (raw {row['raw_error'] * 100:+6.1f}%)  table hits {estimate.table_hit_rate:4.0%}", flush=True)

    summary, ms_per_gmac = summarize(rows)
    result = {
        "device": DEVICE,
        "budget_minutes": args.budget_minutes,
        # Whether this run's profile calibrated (None: it reused a table, --skip-profile).
        "context_calibration": (None if args.skip_profile
                                else calibrate_by_default(args.context_calibration, False, args.budget_minutes)),
        "context": predictor.context.to_dict() if predictor.context else None,
        "refinement": None if args.skip_profile else not args.no_refinement,
        "profile_and_train_minutes": round(profile_minutes, 1),
        "table_size": predictor.measurement_count,
        "summary": summary,
        "flops_proxy_ms_per_gmac": ms_per_gmac,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
