"""Write the op-space priors: skeletons of real exports (benchmarks/real_exports.py's zoo) into data/priors/.

    /work/benchvenv/venv/bin/python -m benchmarks.real_exports --out benchmarks/out/real
    .venv/bin/python -m benchmarks.make_priors --zoo benchmarks/out/real

A skeleton is a file as torch.onnx.export or Hugging Face wrote it (its graph, names and shapes, small constants
exactly, each weight's shape and statistics), without its weights: the profiler materializes it with random
weights of the same shape and scale. Architectures not listed in PRIORS are left out on purpose: the accuracy
benchmark reports how the predictor does on architectures whose layers were never profiled as such.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime as ort

from predictor.model.graph import load_model
from profiler.backends.onnxruntime import random_feeds
from profiler.plan import input_shapes_for, sizes_for
from profiler.skeleton import materialize_skeleton, model_to_skeleton

ROOT = Path(__file__).resolve().parents[1]

# Zoo entries (benchmarks/real_exports.py) in profiling priority order: the most used families first, then the
# other exporter of a few, then the rest.
PRIORS: list[str] = [
    "mobilenet_v2", "resnet18", "resnet50", "efficientnet_b0", "bert", "vit_b_16", "mobilenet_v3_large",
    "distilbert", "gpt2", "convnext_tiny", "mobilenet_v3_small", "resnet18_dynamo", "mobilenet_v2_dynamo",
    "efficientnet_b0_dynamo", "regnet_y_400mf", "shufflenet_v2_x1_0", "squeezenet1_1", "densenet121", "mnasnet1_0",
    "vit_b_16_dynamo", "bert_small_dynamo", "prior_bert_s32", "prior_bert_s256", "prior_bert_b2_s64",
    "prior_distilbert_b4_s32", "prior_gpt2_s64", "prior_gpt2_b2_s256", "prior_vit_b_16_b2", "vgg11",
]


def write_priors(zoo: Path, out: Path) -> list[dict[str, object]]:
    """Skeletons of the PRIORS entries of a real-export zoo, and their index."""
    records = {record["name"]: record for record in json.loads((zoo / "manifest.json").read_text())["models"]}
    missing = [name for name in PRIORS if name not in records]
    if missing:
        raise SystemExit(f"not in {zoo}/manifest.json: {', '.join(missing)} (build them with benchmarks.real_exports)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        stale.unlink()
    index: list[dict[str, object]] = []
    for priority, name in enumerate(PRIORS):
        record = records[name]
        name = name.removeprefix("prior_")
        skeleton = model_to_skeleton(load_model(zoo / record["file"]), name)
        path = out / f"{name}.json"
        path.write_text(json.dumps(skeleton, separators=(",", ":")))
        (input_name, dims), = record["input_shapes"].items()
        entry: dict[str, object] = {"file": path.name, "architecture": record["build"], "family": record["family"],
                                    "exporter": record["exporter"], "input": input_name, "batch": int(dims[0]),
                                    "size": int(dims[-1]), "priority": priority}
        entry["resizable"] = _resizes(entry, skeleton)
        index.append(entry)
        print(f"{path}: {len(skeleton['nodes'])} nodes, {path.stat().st_size // 1024} KB"
              + (", resizable" if entry["resizable"] else ""))
    held_out = sorted({r["build"] for r in records.values()} - {str(e["architecture"]) for e in index})
    (out / "index.json").write_text(json.dumps({"priors": index, "held_out": held_out}, indent=1) + "\n")
    return index


def _resizes(entry: dict[str, object], skeleton: dict[str, object]) -> bool:
    """Whether onnxruntime runs the prior at batch 2 and another input size (its shapes are not baked in)."""
    other = sizes_for(entry)[0]
    model = materialize_skeleton(skeleton, input_shapes=input_shapes_for(entry, skeleton, 2, other))
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.run(None, random_feeds(session))
    except Exception:  # noqa: BLE001 - onnxruntime's errors share no base: any failure means it does not resize
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=ROOT / "benchmarks" / "out" / "real")
    parser.add_argument("--out", type=Path, default=ROOT / "data" / "priors")
    args = parser.parse_args(argv)
    write_priors(args.zoo, args.out)


if __name__ == "__main__":
    main()
