"""Ranking's learned transformations against the real thing: fast-path kernels and latencies vs compressing each
candidate for real, on the real-export zoo.

    .venv/bin/python -m benchmarks.rank_agreement --zoo benchmarks/out/real --home HOME --device DEVICE \\
        --out benchmarks/results/rank_agreement.json

For each fp32 export of the zoo at batch 1 (CNNs, ViTs and text models, through the TorchScript exporter; not the
priors-only entries) and each prune ratio, `latpred rank` answers from the model's
learned transformations (the fast path, as REST ranks) and `latpred rank --exact` compresses, optimizes and
extracts each candidate for real. Reported per model and ratio: kernels whose keys differ (as multisets), and the
two predicted latencies on DEVICE's table (profiled in HOME, e.g. by benchmarks.accuracy). The ratio 0.3 is among
the probes the fast path learns from; 0.2, 0.5 and 0.7 are not.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RATIOS = (0.2, 0.3, 0.5, 0.7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "out" / "real")
    parser.add_argument("--home", type=Path, required=True, help="LATPRED_HOME holding the device's table")
    parser.add_argument("--device", default="bench-cpu-1t")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rank_agreement.json")
    parser.add_argument("--only", nargs="*", help="zoo entries to compare (default: every fp32 batch-1 export)")
    args = parser.parse_args()
    os.environ["LATPRED_HOME"] = str(args.home)

    from predictor import Predictor
    from predictor.compression.config import parse_config
    from predictor.estimation.prepared import PreparedModel
    from predictor.kernels.keys import extract_kernels, name_unnamed_nodes
    from predictor.model.graph import load_model
    from predictor.runtime.optimizer import local_runtime, nchwc_block_size, nchwc_channel_alignment

    runtime = local_runtime(1)
    records = json.loads((args.zoo / "manifest.json").read_text())["models"]
    names = [r["name"] for r in records if r["compression"] == "fp32" and r["batch"] == 1
             and r["exporter"] == "torchscript" and not r["name"].startswith("prior_")
             and (not args.only or r["name"] in args.only)]
    rows: list[dict[str, Any]] = []
    with Predictor(args.device) as predictor:
        for index, name in enumerate(names, 1):
            path = args.zoo / f"{name}.onnx"
            prepared = PreparedModel.create(name_unnamed_nodes(load_model(path)), runtime)
            candidates = {f"prune{r}": {"default": {"prune_ratio": r}} for r in RATIOS}
            fast = {row.name: row.latency_ms for row in predictor.rank(path, candidates)}
            exact = {row.name: row.latency_ms for row in predictor.rank(path, candidates, exact=True)}
            for ratio in RATIOS:
                config = parse_config(candidates[f"prune{ratio}"])
                real = [k.key for k in extract_kernels(prepared.compressed(config), runtime)]
                learned = prepared.fast_keys(config)
                label = f"prune{ratio}"
                rows.append({"model": name, "prune_ratio": ratio, "kernels": len(real),
                             "differing_kernels": sum((Counter(real) - Counter(learned)).values()),
                             "fast_ms": fast[label], "exact_ms": exact[label],
                             "difference": fast[label] / exact[label] - 1})
            last = rows[-len(RATIOS):]
            print(f"[{index}/{len(names)}] {name}: " + ", ".join(
                f"{r['prune_ratio']}: {r['differing_kernels']}/{r['kernels']} kernels, {r['difference']:+.1%}"
                for r in last), flush=True)
    differences = [abs(r["difference"]) for r in rows]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    summary = {
        "pairs": len(rows),
        "differing_kernels": sum(r["differing_kernels"] for r in rows),
        "kernels": sum(r["kernels"] for r in rows),
        "identical_kernel_lists": sum(r["differing_kernels"] == 0 for r in rows),
        "within_1pct": sum(d <= 0.01 for d in differences) / len(rows),
        "within_3pct": sum(d <= 0.03 for d in differences) / len(rows),
        "max_abs_difference": max(differences),
        "mean_abs_difference": sum(differences) / len(rows),
    }
    result = {"date": datetime.date.today().isoformat(), "commit": commit, "device": args.device,
              "nchwc_block": nchwc_block_size(runtime), "channel_alignment": nchwc_channel_alignment(runtime),
              "ratios": list(RATIOS), "summary": summary, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
