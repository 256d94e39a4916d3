"""Where a prediction goes wrong: predicted vs measured time per kernel of one model and config.

    .venv/bin/python benchmarks/kernel_breakdown.py --home /tmp/acc-home --arch mobilenet_v3_small \
        --config '{"default": {"prune_ratio": 0.5, "round_to": 8}}' --out benchmarks/results/breakdown.json

Loads the device table and regressors of an accuracy run (`--home`, device bench-cpu-1t), predicts the
architecture of benchmarks/zoo.py under the config, then profiles the really compressed model on this host
as the profiler does (paired runs, the per-node split anchored to the model's time, scaled to the device's
baseline) and prints the predicted and measured time per op type and source (table, regressor, fallback),
and the kernels that are furthest off.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

from predictor.config import parse_config  # noqa: E402
from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.prepared import PreparedModel  # noqa: E402
from predictor.store import create_store_engine, get_device, session_factory  # noqa: E402
from profiler.backends.base import PROFILING_PROTOCOL  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402

_WORST = 12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="LATPRED_HOME of an accuracy run")
    parser.add_argument("--device", default="bench-cpu-1t")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--config", default="{}", help="compression config as JSON")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    engine = create_store_engine(f"sqlite:///{args.home / 'latpred.db'}")
    with session_factory(engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, args.device))
    backend = OnnxRuntimeBackend(threads=1)
    prepared = PreparedModel.create(zoo.build_model(args.arch, image_size=224), backend.runtime())
    config = parse_config(json.loads(args.config))
    estimate = predictor.estimate(prepared.kernels(config))
    model = prepared.compressed(config)
    wall = backend.measure_model(model, PROFILING_PROTOCOL)
    baseline = predictor.reference_baselines.get(wall.reference_kind)
    factor = baseline / wall.reference_ms if baseline and wall.reference_ms else 1.0
    measured = {t.kernel.name: t.timing.median_ms * factor
                for t in backend.measure_kernels(model, PROFILING_PROTOCOL, wall=wall)}

    groups: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: {"kernels": 0, "predicted_ms": 0.0,
                                                                          "measured_ms": 0.0})
    kernels: list[dict[str, Any]] = []
    for kernel in estimate.to_dict()["kernels"]:
        truth = measured.get(kernel["name"])
        group = groups[(kernel["op_type"], kernel["source"])]
        group["kernels"] += 1
        group["predicted_ms"] += kernel["latency_ms"]
        group["measured_ms"] += truth or 0.0
        kernels.append({"name": kernel["name"], "op_type": kernel["op_type"], "source": kernel["source"],
                        "predicted_ms": kernel["latency_ms"], "measured_ms": truth})
    print(f"{args.arch} {args.config}: predicted {estimate.latency_ms:.3f} ms,"
          f" measured {wall.median_ms * factor:.3f} ms (scaled to the baseline; raw {wall.median_ms:.3f} ms)")
    def miss_ms(item: tuple[tuple[str, str], dict[str, float]]) -> float:
        return abs(item[1]["predicted_ms"] - item[1]["measured_ms"])

    for (op_type, source), group in sorted(groups.items(), key=miss_ms, reverse=True):
        print(f"  {op_type:26s} {source:9s} {int(group['kernels']):4d} kernels  predicted {group['predicted_ms']:8.3f}"
              f"  measured {group['measured_ms']:8.3f} ms")
    worst = sorted((k for k in kernels if k["measured_ms"] is not None),
                   key=lambda k: -abs(k["predicted_ms"] - k["measured_ms"]))[:_WORST]
    for kernel in worst:
        print(f"    {kernel['name'][:48]:48s} {kernel['op_type']:22s} {kernel['source']:9s}"
              f" predicted {kernel['predicted_ms']:.4f}  measured {kernel['measured_ms']:.4f} ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "arch": args.arch, "config": json.loads(args.config), "predicted_ms": estimate.latency_ms,
            "measured_ms": wall.median_ms * factor, "raw_measured_ms": wall.median_ms,
            "groups": [{"op_type": op, "source": source, **group} for (op, source), group in groups.items()],
            "kernels": kernels}, indent=1) + "\n")


if __name__ == "__main__":
    main()
