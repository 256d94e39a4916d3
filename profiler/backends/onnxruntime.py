"""onnxruntime backend: kernels from its optimizer, in-graph kernel time by split run time.

Every run pays per-run overhead (input binding, executor start) outside its kernels, the profiler adds a
few microseconds of its own to every node it times, and its events need not add up to a run. So the
profiler's per-node times only say how a run's cost splits between kernels; the cost itself is the
model's end-to-end time without the profiler less an empty model's run time (see measure_kernels).
Per-run and per-kernel costs that remain are learned from end-to-end runs of real models
(predictor.estimation.overhead).

With one intra-op thread onnxruntime runs every kernel on the calling thread, so a run is timed by that
thread's CPU time: on an idle device it equals the wall time, and on a shared host it leaves out the time
the OS gave other processes (a busy process on each core of this 2-core VM made ResNet-18's wall time 1.9x
and its thread CPU time 1.01x, docs/history/results/contention.json). With more threads the work spreads over a pool
and wall time is used.

Neither clock leaves out a shared host's own slow spells (a VM whose neighbours load the host: the reference
conv's thread CPU time had p10 2.30 and p90 2.95 ms within a minute here, docs/history/results/pairing.json). So model
runs are timed in pairs with runs of the device's reference kernel (after each block of runs that costs at
least one reference run), and Timing.reference_ms says how fast the host was during them: the profiler and
the ground truth scale by it to the device's baseline state.

The reference's run right after a block starts from the caches the model's runs left: x1.05-1.19 slower than
on its own, more after bigger models (docs/history/results/reference_cache.json). That is the cache effect that
slows the memory-bound kernels of a big model too (docs/history/results/context.json: a depthwise conv beside
19 MB of other weights x1.6, a dense conv not at all), so the cold run stays the pair: it scales a big model's
runs down by part of it. Pairing with the reference's second run instead (_REFERENCE_RUNS_PER_BLOCK = 2) predicted the
kernels models share neither better nor worse within this host's run-to-run noise (docs/history/results/split_*.json).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from predictor.kernels.keys import Kernel, extract_kernels, kernels_from_optimized, name_unnamed_nodes
from predictor.model.graph import set_input_shapes
from predictor.runtime.optimizer import RuntimeSpec, local_runtime, nchwc_block_size, translate_runtime_error
from profiler.backends.base import (
    KernelTiming,
    MeasureProtocol,
    Timing,
    median_is_stable,
    reference_kind,
    reference_model,
    summarize_ms,
)

__all__ = ["OnnxRuntimeBackend", "less_event_time", "random_feeds", "split_node_times"]

_CALIBRATION_NODES = 64
# Bounds on the factor from the profiler's per-node times to the model's cost (below 1 where the profiler's
# own cost inflates many tiny nodes); beyond them the profile is broken (events missing), not merely scaled.
_SPLIT_SCALE = (0.1, 2.0)
# The least share of its profiler event a node keeps once the profiler's own time is taken off: a trivial node's
# cost is a fraction of a microsecond, its event's a few (profiler_event_ms).
_MIN_EVENT_SHARE = 0.1
# Reference runs after each block of paired runs; the last one is the block's pair and a block lasts as long as
# they do, so pairing costs at most as much time as the runs (1: the cold run is the pair, see the module docstring).
_REFERENCE_RUNS_PER_BLOCK = 1
# Runs enough for a median where each run takes so long that the protocol's minimum would not fit its time cap.
_MIN_SLOW_REPEATS = 3
# Nodes of a quantized model (QDQ or integer ops): only such a model can need the int8 reference.
_QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                            "ConvInteger", "DynamicQuantizeLinear"})

logger = logging.getLogger(__name__)

_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def random_feeds(session: object, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for a session: standard normal floats, zeros for integer inputs (valid indices)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for arg in session.get_inputs():  # type: ignore[attr-defined]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        dtype = _NUMPY_TYPES.get(arg.type, np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[arg.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[arg.name] = np.zeros(shape, dtype=dtype)
    return feeds


class OnnxRuntimeBackend:
    """onnxruntime with a fixed execution provider and thread count."""

    name = "onnxruntime"

    def __init__(self, threads: int = 1, execution_provider: str = "CPUExecutionProvider",
                 paired: bool = True) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if execution_provider not in available:
            from profiler.backends.base import BackendUnavailableError

            raise BackendUnavailableError(
                f"execution provider {execution_provider} is not available here (have: {', '.join(available)})"
            )
        self._runtime = local_runtime(threads=threads, execution_provider=execution_provider)
        # What a run's latency is timed with (see the module docstring).
        self.clock_name = "thread_cpu" if threads == 1 and execution_provider == "CPUExecutionProvider" else "wall"
        self._clock = time.thread_time if self.clock_name == "thread_cpu" else time.perf_counter
        self._empty_run_ms: float | None = None
        # (per-node profiler overhead, its event time beyond the node's cost), ms: _profiler_costs.
        self._profiler_costs_ms: tuple[float, float] | None = None
        # measure_model's default: time runs in pairs with the reference kernel (see the module docstring).
        self.paired = paired
        self._references: dict[str, _Pairing] = {}

    def runtime(self) -> RuntimeSpec:
        return self._runtime

    def extract_kernels(self, model: onnx.ModelProto) -> list[Kernel]:
        return extract_kernels(model, self._runtime)

    def _session(self, model: onnx.ModelProto, profile_dir: Path | None = None,  # type: ignore[no-untyped-def]
                 optimized_path: Path | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self._runtime.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile_dir / "profile")
        if optimized_path is not None:
            # The graph is read for its kernels only: weights go to a file beside it that nobody reads.
            options.optimized_model_filepath = str(optimized_path)
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
            options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "4096")
        try:
            return ort.InferenceSession(model.SerializeToString(), options,
                                        providers=[self._runtime.execution_provider])
        except Exception as exc:  # onnxruntime's pybind errors have no common public base
            raise translate_runtime_error(exc) from exc

    def _timed_ms(self, session, feeds) -> float:  # type: ignore[no-untyped-def]
        start = self._clock()
        session.run(None, feeds)
        return (self._clock() - start) * 1000.0

    def _pairing(self, kind: str) -> _Pairing:
        if kind not in self._references:
            session = self._session(reference_model(kind))
            feeds = random_feeds(session)
            warm_until = time.perf_counter() + 1.0
            for _ in range(3):
                session.run(None, feeds)
                if time.perf_counter() > warm_until:  # a slow device: one warm-up is enough
                    break
            self._references[kind] = _Pairing(session, feeds, self._timed_ms(session, feeds))
        return self._references[kind]

    def reference_kind_of(self, model: onnx.ModelProto) -> str:
        """The reference a model's runs are paired with (base.reference_kind; fp32 without quantized nodes)."""
        if not any(node.op_type in _QUANTIZED_OPS for node in model.graph.node):
            return "fp32"
        return reference_kind(self.extract_kernels(model))

    def _run_until_stable(self, session, feeds, protocol: MeasureProtocol,  # type: ignore[no-untyped-def]
                          pairing: _Pairing | None = None) -> tuple[list[float], list[float]]:
        """Warm up, then run until the median is stable or a cap is hit.

        Returns the runs' times (ms) and, with `pairing`, each run's reference time (ms): the reference
        kernel's run after the block of runs that holds it (the last of _REFERENCE_RUNS_PER_BLOCK runs); a
        block lasts at least as long as those runs, so pairing costs at most as much time as the runs
        themselves. With pairing, the stopping rule looks at the runs' ratios to their reference runs.
        """
        # A budget is a budget on slow devices (a board, an emulated CPU, where one run takes seconds): the
        # protocol's counts give way to its time. Warm-up stops once it has taken half the time cap, and past the
        # cap _MIN_SLOW_REPEATS runs are enough.
        warm_until = time.perf_counter() + protocol.max_seconds / 2
        for _ in range(protocol.warmup_runs):
            session.run(None, feeds)
            if time.perf_counter() > warm_until:
                break
        samples: list[float] = []
        references: list[float] = []
        block_ms = 0.0
        deadline = time.perf_counter() + protocol.max_seconds
        while len(samples) < protocol.max_repeats:
            samples.append(self._timed_ms(session, feeds))
            if pairing is not None:
                block_ms += samples[-1]
                if block_ms >= _REFERENCE_RUNS_PER_BLOCK * pairing.last_ms:
                    self._close_block(pairing, samples, references)
                    block_ms = 0.0
            judged = samples if pairing is None else _ratios(samples, references)
            past_deadline = time.perf_counter() > deadline
            if len(judged) >= protocol.min_repeats and (median_is_stable(judged, protocol.stable_within)
                                                         or past_deadline):
                break
            if past_deadline and len(judged) >= _MIN_SLOW_REPEATS:
                break
        if pairing is not None and len(references) < len(samples):
            self._close_block(pairing, samples, references)
        return samples, references

    def _close_block(self, pairing: _Pairing, samples: list[float], references: list[float]) -> None:
        """Run the reference and pair the runs since the last reference run with its (last) run."""
        for _ in range(_REFERENCE_RUNS_PER_BLOCK):
            pairing.last_ms = self._timed_ms(pairing.session, pairing.feeds)
        references.extend([pairing.last_ms] * (len(samples) - len(references)))

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        pairing = kind = None
        if self.paired if paired is None else paired:
            kind = reference or self.reference_kind_of(model)
            pairing = self._pairing(kind)
        per_session: list[tuple[list[float], list[float]]] = []
        for _ in range(max(1, protocol.sessions)):
            session = self._session(model)
            per_session.append(self._run_until_stable(session, random_feeds(session), protocol, pairing))
            del session
        # The session whose median (of ratios, when paired) is the median of all sessions speaks for the model.
        per_session.sort(key=lambda pair: float(np.median(_ratios(*pair) if pairing else pair[0])))
        samples, references = per_session[len(per_session) // 2]
        timing = replace(summarize_ms(samples), repeats=sum(len(s) for s, _ in per_session))
        if pairing is None or kind is None:
            return timing
        return replace(timing, reference_ms=timing.median_ms / float(np.median(_ratios(samples, references))),
                       reference_kind=kind)

    def empty_run_ms(self, protocol: MeasureProtocol) -> float:
        """Wall time of one run of a model that does (almost) nothing: the per-run overhead."""
        if self._empty_run_ms is None:
            self._empty_run_ms = self.measure_model(_empty_model(), protocol, paired=False).median_ms
        return self._empty_run_ms

    def profiler_overhead_ms(self, protocol: MeasureProtocol) -> float:
        """Time the per-node profiler adds to each node it times (calibrated once on a chain of tiny nodes)."""
        return self._profiler_costs(protocol)[0]

    def profiler_event_ms(self, protocol: MeasureProtocol) -> float:
        """Time the profiler's event of a node holds beyond the node's own cost (same chain, same calibration).

        A Relu on 16 floats costs a fraction of a microsecond in a run without the profiler, its event 2.5 us
        more (docs/history/results/split_event.json); a kernel of milliseconds carries the same few microseconds.
        Split in proportion to the events, a model's tiny kernels took that time from its big ones.
        """
        return self._profiler_costs(protocol)[1]

    @property
    def profiler_calibration(self) -> dict[str, float] | None:
        """The profiler's costs per node as calibrated (microseconds), None before the first calibration."""
        if self._profiler_costs_ms is None:
            return None
        overhead_ms, event_ms = self._profiler_costs_ms
        return {"overhead_us": round(overhead_ms * 1000.0, 3), "event_us": round(event_ms * 1000.0, 3)}

    def _profiler_costs(self, protocol: MeasureProtocol) -> tuple[float, float]:
        """(profiler overhead per node, event time beyond the node's cost), from one chain of tiny nodes."""
        if self._profiler_costs_ms is None:
            chain = _chain_model(_CALIBRATION_NODES)
            plain = self.measure_model(chain, protocol, paired=False).median_ms
            with tempfile.TemporaryDirectory(prefix="latpred-prof-") as tmp:
                session = self._session(chain, profile_dir=Path(tmp))
                profiled = float(np.median(self._run_until_stable(session, random_feeds(session), protocol)[0]))
                profile_path = session.end_profiling()
                events, _ = _node_times_ms(Path(profile_path), skip_runs=protocol.warmup_runs)
                os.unlink(profile_path)
            events_ms = sum(float(np.median(values)) for values in events.values())
            in_graph_ms = plain - self.empty_run_ms(protocol)
            self._profiler_costs_ms = (max(0.0, (profiled - plain) / _CALIBRATION_NODES),
                                       max(0.0, (events_ms - in_graph_ms) / _CALIBRATION_NODES))
        return self._profiler_costs_ms

    def measure_kernels(self, model: onnx.ModelProto, protocol: MeasureProtocol,
                        wall: Timing | None = None) -> list[KernelTiming]:
        """In-graph latency of every kernel of the model.

        The per-node profiler says how a run's time splits between kernels; how much time there is to
        split comes from `wall`, the model's end-to-end timing without the profiler (the same clock and
        protocol as the ground truth), less the per-run overhead of an empty model. The kernels then add
        up to what the model costs without the profiler. Without `wall`, the profiled runs' own time less
        the profiler's per-node cost calibrated on a chain of tiny nodes is used: over a 30-minute profile
        that made a model's table entries sum to 0.79-1.93x its measured time (0.90-1.57x anchored).
        """
        fixed = name_unnamed_nodes(set_input_shapes(model))
        block = nchwc_block_size(self._runtime)
        order: list[Kernel] = []
        # Samples per kernel of the first session, by position in `order`.
        pooled: dict[int, list[float]] = defaultdict(list)
        # The first session's kernels by what the profiler reports of them (op, input and output shapes), in the
        # order of its events: a later session's node of the same signature is the same kernel.
        by_signature: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        for session_index in range(max(1, protocol.sessions)):
            with tempfile.TemporaryDirectory(prefix="latpred-prof-") as tmp:
                # The kernels are read from the first session's own optimized graph: the runtime numbers the nodes
                # it inserts ("ReorderOutput_token_18") in an order that differs from session to session, so later
                # sessions are matched to them by signature.
                first = session_index == 0
                session = self._session(fixed, profile_dir=Path(tmp),
                                        optimized_path=Path(tmp) / "optimized.onnx" if first else None)
                if first:
                    optimized = onnx.load(str(Path(tmp) / "optimized.onnx"), load_external_data=False)
                    order = kernels_from_optimized(fixed, optimized, nchwc_block=block)
                walls, _ = self._run_until_stable(session, random_feeds(session), protocol)
                profile_path = session.end_profiling()
                samples, signatures = _node_times_ms(Path(profile_path), skip_runs=protocol.warmup_runs)
                os.unlink(profile_path)
                del session
            if wall is not None:
                in_graph_ms = wall.median_ms - self.empty_run_ms(protocol)
            else:
                in_graph_ms = (float(np.median(walls)) - self.empty_run_ms(protocol)
                               - len(samples) * self.profiler_overhead_ms(protocol))
            per_node = split_node_times(samples, in_graph_ms, self.profiler_event_ms(protocol))
            if first:
                positions = _kernel_positions(order, per_node)
                for node in per_node:  # in the order the nodes ran
                    if node in positions:
                        by_signature[signatures[node]].append(positions[node])
            else:
                positions = _positions_by_signature(per_node, signatures, by_signature)
            for node, position in positions.items():
                pooled[position].extend(per_node[node])
        timings: list[KernelTiming] = []
        for position, kernel in enumerate(order):
            if not pooled.get(position):
                logger.warning("no profiler events for kernel %s (%s)", kernel.name, kernel.runtime_node)
                continue
            timings.append(KernelTiming(kernel=kernel, timing=summarize_ms(pooled[position])))
        return timings


def _kernel_positions(kernels: list[Kernel], per_node: dict[str, list[float]]) -> dict[str, int]:
    """The profiled node of each kernel (node name -> position in `kernels`). Nodes onnxruntime's fusions leave
    unnamed in the saved graph get "<Op>_<index>" names in the session; they are matched to the unnamed kernels of
    that op type in order."""
    named = {k.runtime_node for k in kernels if k.runtime_node}
    spare: dict[str, list[str]] = defaultdict(list)
    for node in sorted((n for n in per_node if n not in named), key=_index_of):
        spare[node.rsplit("_", 1)[0]].append(node)
    positions: dict[str, int] = {}
    for position, kernel in enumerate(kernels):
        node = kernel.runtime_node
        if not node and spare.get(kernel.key.op_type.removeprefix("Nchwc")):
            node = spare[kernel.key.op_type.removeprefix("Nchwc")].pop(0)
        if node and node in per_node:
            positions[node] = position
    return positions


def _positions_by_signature(per_node: dict[str, list[float]], signatures: dict[str, tuple[Any, ...]],
                            by_signature: dict[tuple[Any, ...], list[int]]) -> dict[str, int]:
    """A later session's nodes matched to the first session's kernels: the k-th node of a signature, in event
    order, is the k-th kernel of that signature (kernels of one signature have one key and one cost)."""
    taken: dict[tuple[Any, ...], int] = defaultdict(int)
    positions: dict[str, int] = {}
    for node in per_node:
        signature = signatures.get(node)
        candidates = by_signature.get(signature, []) if signature is not None else []
        if taken[signature] < len(candidates):
            positions[node] = candidates[taken[signature]]
            taken[signature] += 1
    return positions


class _Pairing:
    """The reference kernel's session for paired timing, and its latest run time (ms)."""

    def __init__(self, session: object, feeds: dict[str, np.ndarray], last_ms: float) -> None:
        self.session = session
        self.feeds = feeds
        self.last_ms = last_ms


def _ratios(samples: list[float], references: list[float]) -> list[float]:
    """Each paired run's time over its reference run's time (runs not yet paired are left out)."""
    return [sample / reference for sample, reference in zip(samples, references, strict=False) if reference > 0]


def _chain_model(length: int) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu{i}") for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info(f"t{length}", TensorProto.FLOAT, [1, 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _index_of(node_name: str) -> int:
    suffix = node_name.rsplit("_", 1)[-1]
    return int(suffix) if suffix.isdigit() else 1 << 30


def _empty_model() -> onnx.ModelProto:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"], name="identity")], "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def less_event_time(event_time_ms: float, event_ms: float) -> float:
    """A node's profiled time less the profiler's own `event_ms`, keeping at least _MIN_EVENT_SHARE of it."""
    return max(event_time_ms - event_ms, _MIN_EVENT_SHARE * event_time_ms)


def split_node_times(samples: dict[str, list[float]], in_graph_ms: float,
                     event_ms: float = 0.0) -> dict[str, list[float]]:
    """Each node's profiled run times, less the profiler's `event_ms`, scaled so their medians add up to `in_graph_ms`.

    The profiler's own time inside each event (`event_ms`, the same for a Relu as for a big conv) comes off
    first; a node keeps at least _MIN_EVENT_SHARE of its event, the share a trivial node's cost is of its
    event. Without it the split hands the profiler's time to the nodes in proportion: mobilenet_v3_small
    pruned 50% (67 of its 104 events under 10 us) had its events scaled by 0.825, their events less that
    time by 1.012, a ResNet-18 by 1.079 and 1.081 (docs/history/results/split_event.json).
    """
    corrected = {node: [less_event_time(value, event_ms) for value in values] for node, values in samples.items()}
    node_total = sum(float(np.median(values)) for values in corrected.values())
    scale = min(_SPLIT_SCALE[1], max(_SPLIT_SCALE[0], in_graph_ms / node_total)) if node_total > 0 else 1.0
    return {node: [value * scale for value in values] for node, values in corrected.items()}


def _node_times_ms(profile_path: Path, skip_runs: int) -> tuple[dict[str, list[float]], dict[str, tuple[Any, ...]]]:
    """Per-node kernel times (ms) from an onnxruntime profile, dropping the warm-up runs, in the order the nodes
    first ran; and each node's signature (op, input and output shapes as the runtime reports them)."""
    events = json.loads(profile_path.read_text())
    per_node: dict[str, list[float]] = {}
    signatures: dict[str, tuple[Any, ...]] = {}
    seen: dict[str, int] = defaultdict(int)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        node = event["name"][: -len("_kernel_time")]
        seen[node] += 1
        if node not in signatures:
            args = event.get("args") or {}
            signatures[node] = (args.get("op_name"), json.dumps(args.get("input_type_shape")),
                                json.dumps(args.get("output_type_shape")))
        if seen[node] <= skip_runs:
            continue
        # The profiler's clock ticks in microseconds; a kernel reported as 0 us took under one.
        per_node.setdefault(node, []).append(max(float(event["dur"]), 0.5) / 1000.0)
    return per_node, signatures
