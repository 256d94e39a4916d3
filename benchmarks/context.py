"""Does a kernel cost more inside a big model than inside a tiny one? The same kernel, timed in both.

    .venv/bin/python benchmarks/context.py --rounds 3 --reference-runs 2 --out benchmarks/results/context.json

Each probe (a dense 3x3 conv, a depthwise 3x3 conv, a strided stem conv with HardSwish) is timed as the
profiler times kernels (paired runs with the reference conv, the per-node split anchored to the model's
time) in models that hold the probe and an unrelated branch of 0, 1, 4 or 8 convs of 256 channels
(2.4 MB of weights each, so up to 19 MB touched between two runs of the probe: the probe's weights and
buffers leave the 2 MB L2 cache of this host's cores). The probe's time is divided by the reference
conv's time during the same runs, so the host's speed swings cancel; rounds interleave the contexts.
If the cache footprint of the surrounding model mattered, the ratio would grow with the branch.
`--reference-runs 2` pairs the runs with the reference's second run after them, which the surrounding
model's footprint hardly slows (benchmarks/reference_cache.py); with 1 (the profiler's choice) the cold
reference run grows with the footprint too and takes part of the effect out.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import profiler.backends.onnxruntime as ort_backend  # noqa: E402
from profiler.backends.base import PROFILING_PROTOCOL  # noqa: E402
from profiler.calibration import ProbeSpec, probe_model  # noqa: E402

BRANCHES = (0, 1, 4, 8)
# name: (input shape, weight shape, group, stride, activation)
PROBES: dict[str, ProbeSpec] = {
    "conv3x3_32x56": ([1, 32, 56, 56], (32, 32, 3, 3), 1, 1, "Relu"),
    "depthwise3x3_96x56": ([1, 96, 56, 56], (96, 1, 3, 3), 96, 1, "Relu"),
    "stem3x3s2_3to16x224": ([1, 3, 224, 224], (16, 3, 3, 3), 1, 2, "HardSwish"),
}


def context_model(probe: str, branch: int) -> onnx.ModelProto:
    """The probe (nodes named probe*) beside an unrelated chain of `branch` 256-channel 3x3 convs."""
    return probe_model(probe, branch, PROBES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference-runs", type=int, choices=(1, 2), default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    ort_backend._REFERENCE_RUNS_PER_BLOCK = args.reference_runs
    backend = ort_backend.OnnxRuntimeBackend(threads=1)
    ratios: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for round_index in range(args.rounds):
        for probe in PROBES:
            for branch in BRANCHES:
                model = context_model(probe, branch)
                wall = backend.measure_model(model, PROFILING_PROTOCOL)
                timings = backend.measure_kernels(model, PROFILING_PROTOCOL, wall=wall)
                probe_ms = sum(t.timing.median_ms for t in timings if t.kernel.name.startswith("probe"))
                assert wall.reference_ms
                ratios[probe][branch].append(probe_ms / wall.reference_ms)
                print(f"round {round_index + 1} {probe:22s} branch of {branch} convs: probe {probe_ms:.4f} ms,"
                      f" reference {wall.reference_ms:.3f} ms, ratio {ratios[probe][branch][-1]:.4f}", flush=True)
    result: dict[str, Any] = {"rounds": args.rounds, "reference_runs": args.reference_runs, "probes": {}}
    for probe, by_branch in ratios.items():
        medians = {branch: statistics.median(values) for branch, values in by_branch.items()}
        result["probes"][probe] = {str(branch): {"median_ratio": medians[branch], "ratios": by_branch[branch],
                                                 "vs_alone": medians[branch] / medians[0]}
                                   for branch in BRANCHES}
        print(f"{probe:22s} " + "  ".join(f"{branch} convs: x{medians[branch] / medians[0]:.3f}"
                                          for branch in BRANCHES))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
