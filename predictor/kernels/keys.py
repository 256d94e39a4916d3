"""Kernels as the runtime executes them, and their canonical keys.

`extract_kernels` runs the runtime's own graph optimizer, reads the optimized graph and maps every
executed node back to the original nodes it came from. The same function derives the keys of the
profiler's single-kernel models, so a key measured on a device and a key found in a user's model
match by construction.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any

import numpy as np
import onnx
from onnx import helper

from predictor.model.graph import TensorInfo, infer_tensor_infos, initializer_arrays, set_input_shapes
from predictor.model.shapes import RuntimeShapes, infer_runtime_shapes
from predictor.runtime.optimizer import RuntimeSpec, nchwc_block_size, optimize_model

__all__ = [
    "ELEM_TYPE_NAMES",
    "Kernel",
    "KernelKey",
    "extract_kernels",
    "name_unnamed_nodes",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]

# Runtime ops that only move or reinterpret data; they never take over the original node of another op.
_GLUE_OPS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}
_LAYOUT_OPS = {"ReorderInput", "ReorderOutput"}
_HEAVY_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
              "GlobalMaxPool", "LayerNormalization", "Softmax", "Resize", "Concat", "MatMulNBits"}
_FOLDED_INTO_HEAVY = {"Transpose", "DequantizeLinear"}
_QDQ_NODE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Runtime ops that multiply by a weight tensor: the ones whose keys carry a weight shape, bits and sparsity (an
# Add's bias or a layer norm's scale is a parameter, not a weight).
_WEIGHTED_OPS = {"Conv", "FusedConv", "ConvInteger", "QLinearConv", "ConvTranspose", "NhwcConv", "Gemm", "FusedGemm",
                 "QGemm", "MatMul", "FusedMatMul", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                 "QLinearMatMul", "MatMulNBits", "Attention"}
# Original ops in order of how much they say about a kernel: the first one found names the kernel.
_PRIMARY_ORDER = [
    "Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul", "QLinearConv", "QLinearMatMul", "MatMulNBits", "Attention", "LayerNormalization",
    "Softmax", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize", "Concat", "ReduceMean",
    "BatchNormalization", "Add", "Mul", "Sub", "Div",
]
# The names keys give ONNX element types (TensorProto.DataType numbers); a type without a name is keyed by its
# number. Public: the REST API's key schema lists them as the known dtypes.
ELEM_TYPE_NAMES = {
    1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
    11: "float64", 16: "bfloat16", 21: "uint4", 22: "int4",
}
_ELEM_TYPE_BITS = {1: 32, 2: 8, 3: 8, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 16: 16, 21: 4, 22: 4}
_DOMAIN_PREFIX = {"": "", "ai.onnx": "", "com.microsoft": "", "com.microsoft.nchwc": "Nchwc"}
_SPARSITY_STEP = 0.05
_OPSET_FOR_DEFAULTS = 21
_INT8_OPS = ("QLinear", "QGemm", "MatMulInteger", "ConvInteger", "DynamicQuantize", "QuantizeLinear",
             "DequantizeLinear")


def _canonical_value(value: Any) -> Any:
    """Attribute and shape values in a JSON-stable form (tuples, rounded floats; a subgraph or tensor as a digest)."""
    if isinstance(value, (onnx.GraphProto, onnx.TensorProto, onnx.SparseTensorProto, onnx.TypeProto)):
        # Control flow (If, Loop, Scan) carries graphs; a kernel is told apart by what they are, not read from them.
        kind = type(value).__name__.removesuffix("Proto").lower()
        return f"{kind}:{hashlib.sha256(value.SerializeToString(deterministic=True)).hexdigest()[:16]}"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, (list, tuple)):
        return tuple(_canonical_value(v) for v in value)
    if isinstance(value, np.generic):
        return _canonical_value(value.item())
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    return value


def _shape_or_none(value: Any) -> Shape | None:
    return None if value is None else tuple(int(v) for v in value)


@dataclass(frozen=True)
class KernelKey:
    """Canonical, hashable description of one kernel: what a device table is indexed by."""

    op_type: str
    inputs: tuple[Shape | None, ...]
    outputs: tuple[Shape | None, ...]
    weight: Shape | None = None
    activation: str | None = None
    attrs: tuple[tuple[str, Any], ...] = ()
    dtype: str = "float32"
    bits: int = 32
    sparsity: float = 0.0
    sparsity_pattern: str = "dense"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; `KernelKey.from_dict(key.to_dict()) == key`."""
        return {
            "op_type": self.op_type,
            "inputs": [_to_json(s) for s in self.inputs],
            "outputs": [_to_json(s) for s in self.outputs],
            "weight": _to_json(self.weight),
            "activation": self.activation,
            "attrs": {name: _to_json(value) for name, value in self.attrs},
            "dtype": self.dtype,
            "bits": self.bits,
            "sparsity": self.sparsity,
            "sparsity_pattern": self.sparsity_pattern,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelKey:
        attrs = data.get("attrs") or {}
        return cls(
            op_type=str(data["op_type"]),
            inputs=tuple(_shape_or_none(s) for s in data.get("inputs", ())),
            outputs=tuple(_shape_or_none(s) for s in data.get("outputs", ())),
            weight=_shape_or_none(data.get("weight")),
            activation=data.get("activation"),
            attrs=tuple(sorted((str(k), _canonical_value(v)) for k, v in attrs.items())),
            dtype=str(data.get("dtype", "float32")),
            bits=int(data.get("bits", 32)),
            sparsity=float(data.get("sparsity", 0.0)),
            sparsity_pattern=str(data.get("sparsity_pattern", "dense")),
        )

    def to_json(self) -> str:
        """Canonical JSON text: sorted keys, no spaces; the basis of the hash. `to_dict` as JSON: the encoder
        writes a tuple as the array `to_dict` turns it into, so the fields go in as they are."""
        fields_ = {name: getattr(self, name) for name in _FIELD_NAMES}
        fields_["attrs"] = dict(self.attrs)
        return json.dumps(fields_, sort_keys=True, separators=(",", ":"))

    @cached_property
    def key_hash(self) -> str:
        """Stable hex digest of the canonical JSON (same across processes and machines)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:32]

    def attr(self, name: str, default: Any = None) -> Any:
        for key, value in self.attrs:
            if key == name:
                return value
        return default


_FIELD_NAMES = tuple(f.name for f in fields(KernelKey))


@dataclass(frozen=True)
class Kernel:
    """One kernel the runtime launches, with the original nodes it covers (empty if runtime-inserted)."""

    name: str
    key: KernelKey
    nodes: tuple[str, ...] = ()
    runtime_node: str = ""
    original_ops: tuple[str, ...] = field(default=())
    # Channel dimensions of the key that the runtime pads to its NCHWc block ("inputs.0.1", "outputs.0.1",
    # "weight.0"): what a pruned channel count becomes there (predictor.compression.fastpath). Not part of the key.
    padded: tuple[str, ...] = field(default=(), compare=False)

    @property
    def op_type(self) -> str:
        return self.key.op_type

    @property
    def inserted(self) -> bool:
        """True for kernels the runtime adds itself (layout reorders, reshapes around Gemm)."""
        return not self.nodes

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "nodes": list(self.nodes),
            "original_ops": list(self.original_ops),
            "runtime_node": self.runtime_node,
            "key": self.key.to_dict(),
            "key_hash": self.key.key_hash,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Kernel:
        return cls(
            name=str(data["name"]),
            key=KernelKey.from_dict(data["key"]),
            nodes=tuple(data.get("nodes", ())),
            runtime_node=str(data.get("runtime_node", "")),
            original_ops=tuple(data.get("original_ops", ())),
        )


def name_unnamed_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every unnamed or duplicate-named node a unique name (`Op_<index>`), in place; returns it."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)
    return model


def extract_kernels(
    model: onnx.ModelProto,
    runtime: RuntimeSpec,
    input_shapes: Mapping[str, list[int]] | None = None,
) -> list[Kernel]:
    """The kernels `runtime` executes for `model`, in execution order, with canonical keys.

    Symbolic input dimensions must be fixed through `input_shapes` (InvalidModelError otherwise).
    """
    fixed = set_input_shapes(model, input_shapes)
    name_unnamed_nodes(fixed)
    optimized = optimize_model(fixed, runtime, weights=False)
    return kernels_from_optimized(fixed, optimized, nchwc_block=nchwc_block_size(runtime))


@dataclass
class _OriginalGraph:
    nodes: list[onnx.NodeProto]
    producer: dict[str, int]
    consumers: dict[str, list[int]]
    by_name: dict[str, int]
    tensors: set[str]
    constants: set[str]
    graph_inputs: set[str]
    graph_outputs: set[str]
    infos: dict[str, TensorInfo]
    arrays: Mapping[str, np.ndarray]


def _describe_original(model: onnx.ModelProto) -> _OriginalGraph:
    nodes = list(model.graph.node)
    producer: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    tensors: set[str] = {value.name for value in model.graph.input}
    arrays = initializer_arrays(model)
    constants: set[str] = set(arrays)
    tensors |= constants
    for index, node in enumerate(nodes):
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(index)
        for output in node.output:
            if output:
                producer[output] = index
                tensors.add(output)
        # Nodes fed only by constants are folded away by the optimizer.
        if node.op_type != "Constant" and all(i in constants for i in node.input if i) and node.input:
            constants.update(o for o in node.output if o)
    initializer_names = {init.name for init in model.graph.initializer}
    graph_inputs = {v.name for v in model.graph.input if v.name not in initializer_names}
    return _OriginalGraph(
        nodes=nodes,
        producer=producer,
        consumers=consumers,
        by_name={node.name: i for i, node in enumerate(nodes)},
        tensors=tensors,
        constants=constants,
        graph_inputs=graph_inputs,
        graph_outputs={v.name for v in model.graph.output},
        infos=infer_tensor_infos(model),
        arrays=arrays,
    )


# Casts the fp16 converter inserts rename the tensors (and so the fused nodes) that follow them.
_NAME_PREFIXES = re.compile(r"^(InsertedPrecisionFreeCast_)+")
_NAME_SUFFIXES = re.compile(r"(_token_\d+|_nchwc|_bn|_fused|_new_reshape|_output_\d+)+$")


def _name_candidates(name: str) -> list[str]:
    """Names a runtime node may be named after: itself, then with the runtime's prefixes and suffixes taken off.

    onnxruntime names a fused or re-laid-out node after the original node or the tensor it replaces, plus a
    suffix (`/layer1/layer1.0/relu/Relu_output_0_nchwc`) or path segments of its own
    (`/features.0/Mul/QuickGeluFusion/`); exporters put `/` in names too, so segments come off from the end,
    one at a time, and a candidate counts only if the original graph has a node or tensor of that name.
    """
    candidates: list[str] = []
    current = _NAME_PREFIXES.sub("", name)
    for _ in range(4):
        candidates += [current, _NAME_SUFFIXES.sub("", current)]
        trimmed = current.rstrip("/")
        if "/" not in trimmed.strip("/"):
            break
        current = trimmed.rsplit("/", 1)[0]
    return list(dict.fromkeys(c for c in [name, *candidates] if c))


def _name_anchors(node: onnx.NodeProto, original: _OriginalGraph) -> list[int]:
    """Original nodes a runtime node is named after (onnxruntime derives fused names from them)."""
    for candidate in _name_candidates(node.name):
        if candidate in original.by_name:
            return [original.by_name[candidate]]
        if candidate in original.producer:
            return [original.producer[candidate]]
    return []


def _map_to_original(optimized_nodes: list[onnx.NodeProto], original: _OriginalGraph) -> list[list[int]]:
    """For each runtime node, the indices of the original nodes it covers."""
    owner: dict[int, int] = {}
    seeds: list[list[int]] = [[] for _ in optimized_nodes]

    # Seed: claim the original nodes a runtime node is named after or whose outputs it produces.
    for k, node in enumerate(optimized_nodes):
        if node.op_type in _LAYOUT_OPS:
            continue
        anchors = [original.producer[o] for o in node.output if o in original.producer]
        anchors += _name_anchors(node, original)
        if node.op_type in _GLUE_OPS:
            same_kind = {node.op_type} | ({"Flatten", "Reshape"} if node.op_type in {"Flatten", "Reshape"} else set())
            anchors = [a for a in anchors if original.nodes[a].op_type in same_kind]
        for anchor in anchors:
            if anchor not in owner:
                owner[anchor] = k
                seeds[k].append(anchor)

    # Unnamed nodes the runtime made (a decomposed activation in an int8 graph) that hand over new tensors: the
    # original node that consumes the same input, of the same kind where there is one, is what they run.
    for k, node in enumerate(optimized_nodes):
        if seeds[k] or node.op_type in _GLUE_OPS or node.op_type in _LAYOUT_OPS or node.op_type in _QDQ_NODE_OPS:
            continue
        consumers = [j for tensor in node.input if tensor in original.tensors and tensor not in original.constants
                     for j in original.consumers.get(tensor, ()) if j not in owner
                     and original.nodes[j].op_type not in _QDQ_NODE_OPS]
        same_kind = [j for j in consumers if original.nodes[j].op_type == node.op_type]
        for anchor in (same_kind or consumers)[:1]:
            owner[anchor] = k
            seeds[k].append(anchor)

    # Expand: a compute kernel also covers the unclaimed original nodes between its inputs and its seeds.
    for k, node in enumerate(optimized_nodes):
        if node.op_type in _GLUE_OPS or node.op_type in _LAYOUT_OPS or not seeds[k]:
            continue
        boundary = {i for i in node.input if i in original.tensors}
        queue = deque((seed, original.nodes[seed].op_type in _HEAVY_OPS) for seed in seeds[k])
        while queue:
            current, past_heavy = queue.popleft()
            for tensor in original.nodes[current].input:
                if not tensor or tensor in boundary or tensor in original.constants:
                    continue
                source = original.producer.get(tensor)
                if source is None or source in owner:
                    continue
                source_op = original.nodes[source].op_type
                # A fused kernel starts at its heavy op; above it only a transpose folded into a
                # MatMul or the dequantize of an int8 input belong to it, not the previous layer's tail.
                if past_heavy and source_op not in _FOLDED_INTO_HEAVY:
                    continue
                owner[source] = k
                queue.append((source, past_heavy or source_op in _HEAVY_OPS))

    # Leftovers were fused into the kernel that produces their input (bias Add, fused Relu, QDQ pairs).
    for index, node in enumerate(original.nodes):
        if index in owner or node.op_type == "Constant":
            continue
        producers = [owner[original.producer[i]] for i in node.input if i in original.producer
                     and original.producer[i] in owner]
        if producers:
            owner[index] = max(producers)
    covered: list[list[int]] = [[] for _ in optimized_nodes]
    for index, k in owner.items():
        covered[k].append(index)
    for indices in covered:
        indices.sort()
    return covered


def _op_name(node: onnx.NodeProto) -> str:
    prefix = _DOMAIN_PREFIX.get(node.domain, node.domain.split(".")[-1].capitalize())
    if node.op_type in _LAYOUT_OPS:
        return node.op_type
    return f"{prefix}{node.op_type}"


def _resolve_reshape(shape: Shape | None, target: np.ndarray | None) -> Shape | None:
    if shape is None or target is None:
        return None
    dims = [int(d) for d in target.reshape(-1)]
    resolved = [shape[i] if d == 0 and i < len(shape) else d for i, d in enumerate(dims)]
    if resolved.count(-1) == 1:
        known = math.prod(d for d in resolved if d != -1) or 1
        resolved[resolved.index(-1)] = math.prod(shape) // known
    elif all(isinstance(d, int) and d > 0 for d in (*shape, *resolved)) and math.prod(resolved) != math.prod(shape):
        # The runtime writes the shape it reshapes a MatMul's input to for its Gemm as a constant; under other
        # input shapes (the fast path's sentinel channel counts) the dimension that makes the element counts
        # agree carries the input's width: the one that can, or the one that then equals an input dimension.
        count = math.prod(shape)
        fits = {j: count // math.prod(resolved[:j] + resolved[j + 1:]) for j in range(len(resolved))
                if count % math.prod(resolved[:j] + resolved[j + 1:]) == 0}
        if len(fits) > 1:
            fits = {j: width for j, width in fits.items() if width in shape}
        if len(fits) == 1:
            (j, width), = fits.items()
            resolved[j] = width
    return tuple(resolved)


def _infer_runtime_infos(
    optimized_nodes: list[onnx.NodeProto],
    covered: list[list[int]],
    original: _OriginalGraph,
    optimized_arrays: Mapping[str, np.ndarray],
) -> dict[str, TensorInfo]:
    """Logical shapes and types of the optimized graph's tensors, from the original graph's inference."""
    infos = dict(original.infos)
    for name, array in optimized_arrays.items():
        infos.setdefault(name, TensorInfo(tuple(array.shape), _np_elem_type(array)))
    for k, node in enumerate(optimized_nodes):
        first = infos.get(node.input[0]) if node.input and node.input[0] else None
        for position, output in enumerate(node.output):
            if not output or output in original.infos:
                continue
            info = _runtime_output_info(node, position, first, covered[k], original, optimized_arrays, infos)
            if info is not None:
                infos[output] = info
    return infos


def _np_elem_type(array: np.ndarray) -> int:
    return int(helper.np_dtype_to_tensor_dtype(array.dtype))


def _runtime_output_info(
    node: onnx.NodeProto,
    position: int,
    first: TensorInfo | None,
    covered: list[int],
    original: _OriginalGraph,
    arrays: Mapping[str, np.ndarray],
    infos: dict[str, TensorInfo],
) -> TensorInfo | None:
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op == "Transpose" and first is not None and first.shape is not None:
        perm = attrs.get("perm") or list(reversed(range(len(first.shape))))
        return TensorInfo(tuple(first.shape[p] for p in perm), first.elem_type)
    if op == "Reshape" and first is not None:
        target = arrays.get(node.input[1]) if len(node.input) > 1 else None
        return TensorInfo(_resolve_reshape(first.shape, target), first.elem_type)
    if op == "QuantizeLinear" and first is not None:
        zero_point = infos.get(node.input[2]) if len(node.input) > 2 else None
        return TensorInfo(first.shape, zero_point.elem_type if zero_point else 2)
    if op == "DequantizeLinear" and first is not None:
        return TensorInfo(first.shape, 1)
    if op == "Cast" and first is not None:
        return TensorInfo(first.shape, int(attrs.get("to", first.elem_type)))
    if op in _LAYOUT_OPS:
        return first
    if op == "Gemm" and first is not None and first.shape is not None and len(node.input) > 1:
        weight = infos.get(node.input[1])
        if weight is not None and weight.shape is not None and len(weight.shape) == 2:
            rows = first.shape[1] if attrs.get("transA") else first.shape[0]
            cols = weight.shape[0] if attrs.get("transB") else weight.shape[1]
            return TensorInfo((rows, cols), first.elem_type)
    # A compute kernel: the last tensor its original nodes hand to the rest of the graph.
    if covered:
        covered_set = set(covered)
        graph_outputs = original.graph_outputs
        external = [
            output
            for index in covered
            for output in original.nodes[index].output
            if output and (output in graph_outputs
                           or any(j not in covered_set for j in original.consumers.get(output, ())))
        ]
        if not external:
            external = [o for o in original.nodes[covered[-1]].output if o]
        # The kernel hands over what its last nodes produce; an input-side node it covers (the dequantize of
        # an int8 input) may feed others too, but its tensor is the kernel's input, not its output.
        external.reverse()
        candidates = [infos.get(name) for name in external if infos.get(name) is not None]
        if candidates:
            chosen = candidates[min(position, len(candidates) - 1)]
            assert chosen is not None
            elem_type = first.elem_type if first is not None and op.startswith("QLinear") else chosen.elem_type
            if op in {"QGemm", "QLinearConv", "QLinearMatMul"} and first is not None:
                elem_type = first.elem_type
            shape = chosen.shape
            if attrs.get("channels_last") == 1 and shape is not None and len(shape) >= 3:
                # NHWC kernels (int8 convs) hand over channels-last tensors.
                shape = (shape[0], *shape[2:], shape[1])
            return TensorInfo(shape, elem_type)
    return first


def _weight_for(
    node: onnx.NodeProto,
    covered: list[int],
    original: _OriginalGraph,
    optimized_arrays: Mapping[str, np.ndarray],
) -> tuple[str | None, np.ndarray | None]:
    """The weight tensor a kernel multiplies with, as the original model stores it (name and values)."""
    for name in node.input[1:]:
        if name in original.arrays and name in optimized_arrays and original.arrays[name].ndim >= 2:
            return name, original.arrays[name]
    for index in covered:
        orig = original.nodes[index]
        if orig.op_type in {"Conv", "ConvTranspose", "Gemm", "MatMul"} and len(orig.input) > 1:
            name = orig.input[1]
            if name in original.arrays:
                return name, original.arrays[name]
            source = original.producer.get(name)
            if source is not None and original.nodes[source].op_type == "DequantizeLinear":
                quantized = original.nodes[source].input[0]
                if quantized in original.arrays:
                    return quantized, original.arrays[quantized]
    for name in node.input[1:]:
        if name in optimized_arrays and optimized_arrays[name].ndim >= 2:
            return None, optimized_arrays[name]
    return None, None


def weight_sparsity(weight: np.ndarray) -> tuple[float, str]:
    """Share of zero weights (rounded to 0.05) and the pattern: dense, unstructured or 2:4."""
    if weight.size == 0:
        return 0.0, "dense"
    zero_share = float(np.count_nonzero(weight == 0)) / weight.size
    if zero_share == 1.0:
        # All zeros is how an initializer left it (timm zero-initializes the last BatchNorm of residual blocks,
        # folded into the conv), not a compression: no runtime skips it, no config makes it (sparsity <= 0.99).
        return 0.0, "dense"
    sparsity = round(round(zero_share / _SPARSITY_STEP) * _SPARSITY_STEP, 2)
    if sparsity == 0.0:
        return 0.0, "dense"
    # Any matrix that is sparse enough has two zeros in every group of four; 2:4 means exactly half.
    if abs(zero_share - 0.5) < 0.05 and _is_two_four(weight):
        return sparsity, "2:4"
    return sparsity, "unstructured"


def _is_two_four(weight: np.ndarray) -> bool:
    """True if every group of 4 consecutive weights along the reduction axis has at least 2 zeros."""
    if weight.ndim == 2:
        # MatMul weights are [K, N], Gemm's with transB [N, K]: the pattern may run along either axis.
        return _rows_two_four(weight.T) or _rows_two_four(weight)
    groups_source = weight.reshape(weight.shape[0], weight.shape[1], -1).transpose(0, 2, 1)
    return _rows_two_four(groups_source.reshape(-1, groups_source.shape[-1]))


def _rows_two_four(rows: np.ndarray) -> bool:
    if rows.shape[-1] % 4:
        return False
    groups = rows.reshape(rows.shape[0], -1, 4)
    return bool(np.all(np.count_nonzero(groups == 0, axis=-1) >= 2))


def kernels_from_optimized(
    original_model: onnx.ModelProto,
    optimized: onnx.ModelProto,
    shape_overrides: Mapping[str, Shape] | None = None,
    nchwc_block: int = 8,
) -> list[Kernel]:
    """Kernels of an already-optimized graph, mapped back to `original_model` (shapes must be fixed).

    Each key holds the shapes the runtime runs the kernel with: the optimized graph's own shape inference
    (predictor.model.shapes), NCHWc channels padded to `nchwc_block`. `shape_overrides` replaces the shapes of
    original tensors (and initializers) and keys then hold the original model's shapes carried through the
    kernels' original nodes instead: the fast config path uses it to learn which key dimensions come from
    which channels.
    """
    original = _describe_original(original_model)
    if shape_overrides:
        original.infos = {name: TensorInfo(tuple(shape_overrides[name]), info.elem_type)
                          if name in shape_overrides else info for name, info in original.infos.items()}
    optimized_nodes = list(optimized.graph.node)
    optimized_arrays = initializer_arrays(optimized)
    covered = _map_to_original(optimized_nodes, original)
    runtime: RuntimeShapes | None = None
    if shape_overrides:
        infos = _infer_runtime_infos(optimized_nodes, covered, original, optimized_arrays)
    else:
        runtime = infer_runtime_shapes(optimized, seed=original.infos, nchwc_block=nchwc_block)
        infos = runtime.infos
    kernels: list[Kernel] = []
    for k, node in enumerate(optimized_nodes):
        if node.op_type == "Constant":
            continue
        kernels.append(_build_kernel(node, covered[k], original, optimized_arrays, infos, runtime))
    return kernels


# Where a quantized layer's weight scale is: one per tensor or one per output channel are other kernels (a
# ResNet-18 ran per tensor in 43 ms, per channel in 53 ms on this host's CPU).
_WEIGHT_SCALE_INPUT = {"QLinearConv": 4, "QLinearMatMul": 4, "QGemm": 4, "DynamicQuantizeMatMul": 2,
                       "MatMulIntegerToFloat": 3}


def _weight_scale(node: onnx.NodeProto, optimized_arrays: Mapping[str, np.ndarray]) -> str | None:
    """"channel" or "tensor": how a quantized layer's weight is scaled (None for other ops)."""
    position = _WEIGHT_SCALE_INPUT.get(node.op_type)
    if position is None or len(node.input) <= position:
        return None
    scale = optimized_arrays.get(node.input[position])
    return None if scale is None else ("channel" if scale.size > 1 else "tensor")


def _build_kernel(
    node: onnx.NodeProto,
    covered: list[int],
    original: _OriginalGraph,
    optimized_arrays: Mapping[str, np.ndarray],
    infos: dict[str, TensorInfo],
    runtime: RuntimeShapes | None,
) -> Kernel:
    attrs = _canonical_attrs(node)
    activation = attrs.pop("activation", None)
    weight_scale = _weight_scale(node, optimized_arrays)
    if weight_scale is not None:
        attrs["weight_scale"] = weight_scale
    data_inputs = [i for i in node.input if i and i not in optimized_arrays]
    input_infos = [infos.get(i) for i in data_inputs]
    output_infos = [infos.get(o) for o in node.output if o]
    weighted = node.op_type in _WEIGHTED_OPS
    weight_name, weight_array = _weight_for(node, covered, original, optimized_arrays) if weighted else (None, None)
    runtime_weight = _runtime_weight(node, optimized_arrays) if runtime is not None and weighted else None
    weight_shape: Shape | None = None
    sparsity, pattern = 0.0, "dense"
    if node.op_type == "MatMulNBits":
        weight_shape = (int(attrs["K"]), int(attrs["N"]))
        bits = int(attrs.get("bits", 4))
    elif weight_array is not None or runtime_weight is not None:
        if runtime_weight is not None:
            weight_shape = tuple(int(d) for d in runtime_weight.shape)
        else:
            assert weight_array is not None
            known = original.infos.get(weight_name) if weight_name else None
            weight_shape = known.shape if known is not None and known.shape is not None \
                else tuple(int(d) for d in weight_array.shape)
        # The model's own weights say how sparse they are (the runtime's may be padded or re-laid out).
        values = weight_array if weight_array is not None else runtime_weight
        assert values is not None
        sparsity, pattern = weight_sparsity(values)
        bits = _ELEM_TYPE_BITS.get(_np_elem_type(values), 32)
    else:
        first_type = input_infos[0].elem_type if input_infos and input_infos[0] is not None else 1
        bits = _ELEM_TYPE_BITS.get(first_type, 32)
    if node.op_type.startswith(_INT8_OPS):
        bits = 8
    first_type = input_infos[0].elem_type if input_infos and input_infos[0] is not None else 1
    input_shapes = [info.shape if info is not None else None for info in input_infos]
    output_shapes = [info.shape if info is not None else None for info in output_infos]
    if attrs.get("channels_last") == 1 and weight_shape is not None and len(weight_shape) == 4:
        # Whether a neighbour already works channels-last decides how onnxruntime labels the tensor;
        # keys state NCHW shapes so the same int8 conv has one key wherever it sits.
        group = int(attrs.get("group", 1))
        input_shapes[:1] = [_as_nchw(s, weight_shape[1] * group) for s in input_shapes[:1]]
        output_shapes = [_as_nchw(s, weight_shape[0]) for s in output_shapes]
    key = KernelKey(
        op_type=_op_name(node),
        inputs=tuple(input_shapes),
        outputs=tuple(output_shapes),
        weight=weight_shape,
        activation=str(activation) if activation is not None else None,
        attrs=tuple(sorted(attrs.items())),
        dtype=ELEM_TYPE_NAMES.get(first_type, str(first_type)),
        bits=bits,
        sparsity=sparsity,
        sparsity_pattern=pattern,
    )
    names = tuple(original.nodes[i].name for i in covered)
    ops = tuple(original.nodes[i].op_type for i in covered)
    primary = _primary_node(covered, original)
    return Kernel(
        name=original.nodes[primary].name if primary is not None else node.name,
        key=key,
        nodes=names,
        runtime_node=node.name,
        original_ops=ops,
        padded=_padded_dims(node, data_inputs, runtime) if runtime is not None else (),
    )


def _runtime_weight(node: onnx.NodeProto, optimized_arrays: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The weight tensor the runtime's node holds (its first initializer input of rank 2 or more after the data)."""
    for name in node.input[1:]:
        array = optimized_arrays.get(name)
        if array is not None and array.ndim >= 2:
            return array
    return None


def _padded_dims(node: onnx.NodeProto, data_inputs: list[str], runtime: RuntimeShapes) -> tuple[str, ...]:
    """The key's channel dimensions that hold NCHWc-blocked tensors, which the runtime pads to its block: those of
    NCHWc ops, and of the ops that run on blocked tensors as they are (an activation after a blocked conv)."""
    padded = [f"inputs.{i}.1" for i, name in enumerate(data_inputs) if name in runtime.blocked]
    padded += [f"outputs.{i}.1" for i, name in enumerate(o for o in node.output if o) if name in runtime.blocked]
    if node.domain == "com.microsoft.nchwc" and node.op_type == "Conv":
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        padded.append("weight.0")
        if group == 1 and data_inputs and data_inputs[0] in runtime.blocked:
            padded.append("weight.1")
    return tuple(padded)


def _as_nchw(shape: Shape | None, channels: int) -> Shape | None:
    """A 4-D shape in NCHW order, given its channel count (NHWC shapes are permuted)."""
    if shape is None or len(shape) != 4 or shape[1] == channels or shape[3] != channels:
        return shape
    return (shape[0], shape[3], shape[1], shape[2])


def _canonical_attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """Attributes with values equal to the ONNX schema default dropped: written or not, same kernel."""
    attrs = {a.name: _canonical_value(helper.get_attribute_value(a)) for a in node.attribute}
    if node.domain not in ("", "ai.onnx"):
        return attrs
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=_OPSET_FOR_DEFAULTS, domain="")
    except onnx.defs.SchemaError:
        return attrs
    for name in list(attrs):
        spec = schema.attributes.get(name)
        if spec is None or not spec.default_value.name:
            continue
        default = _canonical_value(helper.get_attribute_value(spec.default_value))
        if default == attrs[name]:
            del attrs[name]
    return attrs


def _primary_node(covered: list[int], original: _OriginalGraph) -> int | None:
    if not covered:
        return None
    rank = {op: i for i, op in enumerate(_PRIMARY_ORDER)}
    # Quantize / dequantize nodes name a kernel only when it is nothing else.
    rank.update({op: len(rank) + 1 for op in _QDQ_NODE_OPS})
    return min(covered, key=lambda i: (rank.get(original.nodes[i].op_type, len(_PRIMARY_ORDER)), i))
