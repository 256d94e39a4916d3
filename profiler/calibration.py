"""Context calibration: how much slower a memory-bound kernel runs as the model around it grows.

The profiler measures each kernel inside whichever model holds it first; a small model (a few MB of data per
run, which stays in the cache between runs) runs the same memory-bound kernels faster than a big one
(predictor.estimation.context). The profiled models are mostly big, so their end-to-end times say little about the
small end. This stage measures it directly, once per device: each probe (a depthwise 3x3 conv and the
strided stem conv of mobile nets, both memory-bound) is timed as the profiler times kernels (paired runs,
the per-node split) in models that hold it beside an unrelated chain of 0 to 32 convs of 256 channels
(2.4 MB of weights each), so the model's data per run grows from about 7 MB to about 80 MB around the
probe. Rounds interleave the chains, and each probe time is taken relative to the reference kernel timed
in the same runs, so the host's speed swings cancel. predictor.estimation.overhead fits the device's context model to
these times.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from predictor.estimation.context import sensitivity
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from profiler.backends.base import Backend, MeasureProtocol

__all__ = [
    "AUTO_MIN_BUDGET_MINUTES",
    "CALIBRATION_ITEM",
    "CHAINS",
    "PROBES",
    "ProbeSpec",
    "calibrate_by_default",
    "measure_context_probes",
    "probe_model",
]

logger = logging.getLogger(__name__)

# The id a run records in its items_done once the device is calibrated: later runs skip the stage.
CALIBRATION_ITEM = "context-calibration"
# The stage takes about a minute (it ended 0.8 to 1.2 min into the profiles of accuracy runs 10-12): by
# default it runs when a device's default space is profiled with at least this budget. With it, runs 10 and
# 12 met every accuracy target and run 11 all but the compressed one; re-predicted without the context model,
# fp32 and compressed MAPE came out higher in runs 10 and 11 (benchmarks/results/repredict_run1*_context.json).
# A targeted profile (--for-model) measures the model itself, in its own context, and skips it unless asked.
AUTO_MIN_BUDGET_MINUTES = 5.0
CHAINS = (0, 2, 4, 8, 16, 32)
# (input shape, weight shape, group, stride, activation)
ProbeSpec = tuple[list[int], tuple[int, int, int, int], int, int, str]
PROBES: dict[str, ProbeSpec] = {
    "depthwise3x3_96x56": ([1, 96, 56, 56], (96, 1, 3, 3), 96, 1, "Relu"),
    "stem3x3s2_3to16x224": ([1, 3, 224, 224], (16, 3, 3, 3), 1, 2, "HardSwish"),
}
_CHAIN_CHANNELS = 256
_CHAIN_SIZE = 14
_BYTES = FEATURE_NAMES.index("bytes_moved")
_MACS = FEATURE_NAMES.index("macs")


def calibrate_by_default(requested: bool | None, for_model: bool, budget_minutes: float) -> bool:
    """Whether a profile run calibrates: as `requested`, else for the default space with a budget that allows it."""
    if requested is not None:
        return requested
    return not for_model and budget_minutes >= AUTO_MIN_BUDGET_MINUTES


def _conv(name: str, source: str, weight_shape: tuple[int, int, int, int], group: int, stride: int,
          rng: np.random.Generator, nodes: list[onnx.NodeProto], weights: list[onnx.TensorProto]) -> str:
    """Append a Conv with random weight and bias (same padding) to nodes and weights; return its output."""
    weight = numpy_helper.from_array(rng.standard_normal(weight_shape).astype(np.float32), f"{name}_w")
    bias = numpy_helper.from_array(rng.standard_normal(weight_shape[0]).astype(np.float32), f"{name}_b")
    weights += [weight, bias]
    pad = weight_shape[2] // 2
    nodes.append(helper.make_node("Conv", [source, weight.name, bias.name], [f"{name}_out"], name=name,
                                  pads=[pad] * 4, strides=[stride, stride], group=group))
    return f"{name}_out"


def probe_model(probe: str, chain: int, probes: Mapping[str, ProbeSpec] = PROBES) -> onnx.ModelProto:
    """The probe (nodes named probe*) of `probes` beside an unrelated chain of `chain` 256-channel 3x3 convs."""
    shape, weight_shape, group, stride, activation = probes[probe]
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    weights: list[onnx.TensorProto] = []
    out = _conv("probe", "x", weight_shape, group, stride, rng, nodes, weights)
    nodes.append(helper.make_node(activation, [out], ["y"], name="probe_act"))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if chain:
        inputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT,
                                                    [1, _CHAIN_CHANNELS, _CHAIN_SIZE, _CHAIN_SIZE]))
        previous = "z"
        for i in range(chain):
            previous = _conv(f"chain{i}", previous, (_CHAIN_CHANNELS, _CHAIN_CHANNELS, 3, 3), 1, 1, rng,
                             nodes, weights)
        outputs.append(helper.make_tensor_value_info(previous, TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, f"{probe}_{chain}", inputs, outputs, weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def measure_context_probes(backend: Backend, protocol: MeasureProtocol, rounds: int = 2,
                           chains: tuple[int, ...] = CHAINS,
                           progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One row per probe, chain and round: the probe's time over the reference kernel's, its traffic context.

    Rows: {"probe", "chain", "round", "probe_ms", "reference_ms", "ratio", "traffic_bytes", "sensitivity"};
    `ratio` is probe_ms / reference_ms (probe_ms itself where the backend cannot pair runs).
    """
    rows: list[dict[str, Any]] = []
    total = rounds * len(PROBES) * len(chains)
    for round_index in range(rounds):
        for probe in PROBES:
            for chain in chains:
                model = probe_model(probe, chain)
                kernels = backend.extract_kernels(model)
                features = features_matrix([k.key for k in kernels], cached=False)
                probe_rows = [i for i, k in enumerate(kernels) if any(n.startswith("probe") for n in k.nodes)]
                if not probe_rows:
                    raise RuntimeError(f"no kernel of {probe} found in the runtime's graph")
                wall = backend.measure_model(model, protocol)
                timings = backend.measure_kernels(model, protocol, wall=wall)
                probe_ms = sum(t.timing.median_ms for t in timings
                               if any(n.startswith("probe") for n in t.kernel.nodes))
                probe_bytes = features[probe_rows, _BYTES]
                weights = probe_bytes / max(float(probe_bytes.sum()), 1.0)
                rows.append({
                    "probe": probe, "chain": chain, "round": round_index, "probe_ms": probe_ms,
                    "reference_ms": wall.reference_ms,
                    "ratio": probe_ms / wall.reference_ms if wall.reference_ms else probe_ms,
                    "traffic_bytes": float(features[:, _BYTES].sum()),
                    "sensitivity": float(np.dot(weights, sensitivity(probe_bytes, features[probe_rows, _MACS]))),
                })
                logger.info("context probe %s beside %d convs (%.1f MB per run): %.4f ms", probe, chain,
                            rows[-1]["traffic_bytes"] / 1e6, probe_ms)
                if progress is not None:
                    progress(len(rows), total)
    return rows
