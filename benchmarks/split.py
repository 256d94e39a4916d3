"""How to split a model's time between its kernels: in proportion to the profiler's times, or per node?

    .venv/bin/python benchmarks/split.py --reference-runs 1 --out benchmarks/results/split_reference1.json
    .venv/bin/python benchmarks/split.py --reference-runs 2 --out benchmarks/results/split_reference2.json
    .venv/bin/python benchmarks/split.py --out benchmarks/results/split_event.json

The profiler (profiler.backends.onnxruntime.measure_kernels) times each node with onnxruntime's per-node
profiler and scales the nodes so that they add up to the model's time without the profiler less an empty
run. What is left between the nodes' own times and the model's time is the executor's work between
kernels; scaling spreads it in proportion to each kernel's time, so a 5 us layout kernel gets almost none
of it inside a model of big convs and a large share inside a model of tiny kernels. The alternative puts
the same share on every node. Both add up to the model's time, so they differ only where a kernel measured
in one model predicts another: this script profiles models that share kernel keys (the zoo at 224x224 and
a few compressed variants), and for each rule predicts every model's shared kernels from the other models'
measurements of the same keys (scaled by each model's paired reference time, so host speed cancels). It
also prints the per-node remainder of each model. The rules come from the same profiled runs.

The third rule, "event" (what the profiler does since split_event.json), is the proportional one after
the profiler's own time inside each node's event is taken off (the backend's profiler_event_ms, calibrated
on a chain of trivial nodes: 2.5 us in split_event.json, where a Relu on 16 floats costs a fraction of a
microsecond), so tiny kernels no longer
take a share of the profiler's time in proportion to their count.

`--reference-runs`: the reference conv's runs after each block of paired runs, the last being the pair
(profiler.backends.onnxruntime._REFERENCE_RUNS_PER_BLOCK; 1, the first and cold run, is what the profiler
uses): the same comparison says which reference scales kernels shared between models more alike.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

import profiler.backends.onnxruntime as ort_backend  # noqa: E402
from predictor.compress import apply_config  # noqa: E402
from predictor.config import parse_config  # noqa: E402
from profiler.backends.base import PROFILING_PROTOCOL  # noqa: E402

MODELS: list[tuple[str, dict[str, Any]]] = [
    *[(arch, {}) for arch in ("mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet1_0",
                              "efficientnet_b0", "efficientnet_b1", "resnet18", "resnet34", "resnet50",
                              "regnet_x_400mf", "shufflenet_v2_x1_0", "squeezenet1_1")],
    ("mobilenet_v2", {"default": {"prune_ratio": 0.3}}),
    ("mobilenet_v3_small", {"default": {"prune_ratio": 0.5, "round_to": 8}}),
    ("resnet18", {"default": {"prune_ratio": 0.3}}),
    ("resnet18", {"default": {"bits": 8}}),
]


def proportional(raw: dict[str, float], in_graph_ms: float) -> dict[str, float]:
    total = sum(raw.values())
    return {node: ms * in_graph_ms / total for node, ms in raw.items()}


def per_node(raw: dict[str, float], in_graph_ms: float) -> dict[str, float]:
    share = (in_graph_ms - sum(raw.values())) / len(raw)
    return {node: max(ms + share, 1e-4) for node, ms in raw.items()}


def event_corrected(event_ms: float) -> Any:
    """The profiler's rule: the event time off each node, then in proportion (split_node_times)."""
    def rule(raw: dict[str, float], in_graph_ms: float) -> dict[str, float]:
        split = ort_backend.split_node_times({node: [ms] for node, ms in raw.items()}, in_graph_ms, event_ms)
        return {node: values[0] for node, values in split.items()}
    return rule


RULES = {"proportional": proportional, "per_node": per_node}
_SUBSTANTIAL_SHARE = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference-runs", type=int, choices=(1, 2), default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    ort_backend._REFERENCE_RUNS_PER_BLOCK = args.reference_runs
    backend = ort_backend.OnnxRuntimeBackend(threads=1)
    recorded: list[tuple[dict[str, list[float]], float]] = []
    split = ort_backend.split_node_times

    def recording_split(samples: dict[str, list[float]], in_graph_ms: float,
                        event_ms: float = 0.0) -> dict[str, list[float]]:
        recorded.append((samples, in_graph_ms))
        return split(samples, in_graph_ms, event_ms)

    event_ms = backend.profiler_event_ms(PROFILING_PROTOCOL)
    RULES["event"] = event_corrected(event_ms)
    print(f"profiler event time per node: {event_ms * 1000:.2f} us", flush=True)

    ort_backend.split_node_times = recording_split  # type: ignore[assignment]
    # models[i]: label, and per rule {key hash: each kernel of that key's time in reference-kernel units}
    models: list[dict[str, Any]] = []
    for arch, raw_config in MODELS:
        label = f"{arch}/{json.dumps(raw_config, sort_keys=True)}" if raw_config else arch
        model = apply_config(zoo.build_model(arch, image_size=224), parse_config(raw_config))
        wall = backend.measure_model(model, PROFILING_PROTOCOL)
        recorded.clear()
        timings = backend.measure_kernels(model, PROFILING_PROTOCOL, wall=wall)
        assert wall.reference_ms and recorded
        sessions = [({node: float(np.median(values)) for node, values in samples.items()}, in_graph_ms)
                    for samples, in_graph_ms in recorded]
        remainders = [(in_graph_ms - sum(raw.values())) / len(raw) * 1000.0 for raw, in_graph_ms in sessions]
        by_rule: dict[str, dict[str, float]] = {}
        for rule, function in RULES.items():
            per_session = [function(raw, in_graph_ms) for raw, in_graph_ms in sessions]
            node_ms = {node: statistics.median(s[node] for s in per_session if node in s)
                       for node in per_session[0]}
            # Kernels by the node the profiler named for them (the few unnamed fused nodes are left out).
            keys: dict[str, list[float]] = defaultdict(list)
            for timing in timings:
                value = node_ms.get(timing.kernel.runtime_node or "")
                if value is not None:
                    keys[timing.kernel.key.key_hash].append(value / wall.reference_ms)
            by_rule[rule] = dict(keys)
        # What the proportional rule scales the raw events by, and the event rule the events less their time.
        scales = {"proportional": statistics.median(in_graph_ms / sum(raw.values()) for raw, in_graph_ms in sessions),
                  "event": statistics.median(in_graph_ms / sum(ort_backend.less_event_time(ms, event_ms)
                                                               for ms in raw.values())
                                             for raw, in_graph_ms in sessions)}
        models.append({"label": label, "kernels": len(timings), "wall_ms": wall.median_ms,
                       "reference_ms": wall.reference_ms, "by_rule": by_rule,
                       "remainder_us_per_node": statistics.median(remainders),
                       "events_under_10us": sum(ms < 0.01 for ms in sessions[0][0].values()), "scales": scales})
        print(f"{label:60s} {len(timings):4d} kernels, {wall.median_ms:8.3f} ms, remainder"
              f" {models[-1]['remainder_us_per_node']:+6.2f} us per node, {models[-1]['events_under_10us']} events"
              f" under 10 us, scaled x{scales['proportional']:.3f} (events less their time x{scales['event']:.3f})",
              flush=True)

    summaries = [{k: v for k, v in m.items() if k != "by_rule"} for m in models]
    result: dict[str, Any] = {"reference_runs": args.reference_runs, "models": summaries,
                              "profiler_costs_us": backend.profiler_calibration, "rules": {}}
    for rule in RULES:
        errors = []
        for index, model in enumerate(models):
            own = model["by_rule"][rule]
            predicted = measured = 0.0
            for key_hash, values in own.items():
                others = [statistics.mean(m["by_rule"][rule][key_hash]) for j, m in enumerate(models)
                          if j != index and key_hash in m["by_rule"][rule]]
                if others:
                    predicted += statistics.median(others) * len(values)
                    measured += sum(values)
            if measured > 0:
                total = sum(sum(values) for values in own.values())
                errors.append({"model": model["label"], "shared_share": measured / total,
                               "error": predicted / measured - 1.0})
        abs_errors = np.array([abs(e["error"]) for e in errors])
        # Models whose shared kernels are a few layout kernels (1-5% of their time) swing by tens of percent
        # from run to run; the models where shared kernels carry a fifth of the time or more say more.
        substantial = np.array([abs(e["error"]) for e in errors if e["shared_share"] >= _SUBSTANTIAL_SHARE])
        result["rules"][rule] = {"models_with_shared_keys": len(errors),
                                 "mape_of_shared_kernel_sums": float(np.mean(abs_errors)),
                                 "within_10pct": float(np.mean(abs_errors <= 0.10)),
                                 "models_sharing_20pct": len(substantial),
                                 "mape_sharing_20pct": float(np.mean(substantial)),
                                 "per_model": errors}
        print(f"{rule:13s}: shared kernels of {len(errors)} models predicted from the other models' measurements:"
              f" MAPE {np.mean(abs_errors):.1%}, within ±10% {np.mean(abs_errors <= 0.10):.0%}; the"
              f" {len(substantial)} models sharing ≥ 20% of their time: MAPE {np.mean(substantial):.1%}")
        for e in errors:
            print(f"    {e['model']:60s} shared {e['shared_share']:4.0%} of its kernel time, error {e['error']:+6.1%}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
