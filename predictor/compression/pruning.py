"""Structured pruning of ONNX models: output channels removed with their dependency groups.

A *channel group* is a set of tensors whose channel axes must keep the same channels: a Conv's
output, the BatchNorm and activations after it, the other operand of a residual Add, a depthwise
conv that follows its producer. Channels are ranked by the L1 norm of the weights producing them
(as torch-pruning's magnitude importance does) and the group keeps floor(C x (1 - ratio)) of them,
rounded down to `round_to`. Groups that reach a graph output (the classifier) or an op whose
channel semantics are not tracked (Reshape, Transpose, Softmax, ...) are never pruned.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from predictor.model.graph import infer_tensor_infos

__all__ = ["ChannelGroups", "analyze_channel_groups", "fold_constant_identities", "prune_model"]

logger = logging.getLogger(__name__)

_CHANNEL_PRESERVING = {
    "BatchNormalization", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh", "Erf",
    "Elu", "Selu", "Softplus", "Gelu", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Resize",
    "Dropout", "Identity", "Add", "Mul", "Sub", "Div", "Sqrt", "Pow", "Neg", "Abs", "Exp", "Log", "Mish",
    "PRelu", "Cast", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}
# Layers whose weight (input 1) makes their output channels: float, and as onnxruntime's quantizers write them.
_CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger"}
_MATMUL_OPS = {"Gemm", "MatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
_ELEMENTWISE_BINARY = {"Add", "Mul", "Sub", "Div", "Pow", "PRelu"}


@dataclass
class _UnionFind:
    parent: dict[int, int] = field(default_factory=dict)

    def find(self, item: int) -> int:
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, a: int, b: int) -> int:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            self.parent[root_b] = root_a
        return root_a


@dataclass
class ChannelGroups:
    """Channel spaces of a model: which tensors share channels, which node produces each space."""

    # tensor name -> list of (space id, size) segments along its channel axis (more than one after Concat)
    segments: dict[str, list[tuple[int, int]]]
    channel_axis: dict[str, int]
    # space id -> nodes whose weights produce those channels (Conv/Gemm/MatMul), in graph order
    sources: dict[int, list[str]]
    locked: set[int]
    union: _UnionFind
    # Producers whose weight is computed (dequantized), not stored: their spaces cannot be pruned.
    dequantized: set[str] = field(default_factory=set)

    def space(self, space_id: int) -> int:
        return self.union.find(space_id)

    def prunable_spaces(self) -> dict[int, list[str]]:
        """Root space -> producing node names, for every space that may be pruned (its producers' weights all
        stored as they are)."""
        result: dict[int, list[str]] = {}
        locked = {self.space(s) for s in self.locked}
        for space_id, nodes in self.sources.items():
            root = self.space(space_id)
            if root in locked:
                continue
            result.setdefault(root, []).extend(nodes)
        return {root: nodes for root, nodes in result.items() if self.dequantized.isdisjoint(nodes)}


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def analyze_channel_groups(model: onnx.ModelProto) -> ChannelGroups:
    """Find the channel dependency groups of a model with fixed input shapes."""
    infos = infer_tensor_infos(model)
    # Constants: initializers and what is computed from them alone (the dequantized weights of QDQ models). Only a
    # layer whose weight is stored as it is can be pruned (quantized models are pruned before quantization); the
    # others still produce their channels, which is how a quantized variant's kernels are matched to the groups.
    stored = {init.name for init in model.graph.initializer}
    initializers = set(stored)
    for node in model.graph.node:
        if node.input and all(not i or i in initializers for i in node.input):
            initializers.update(o for o in node.output if o)
            if node.op_type == "Identity" and node.input[0] in stored:  # shared weights: prune_model copies them
                stored.update(o for o in node.output if o)
    union = _UnionFind()
    segments: dict[str, list[tuple[int, int]]] = {}
    channel_axis: dict[str, int] = {}
    sources: dict[int, list[str]] = {}
    locked: set[int] = set()
    dequantized: set[str] = set()
    counter = iter(range(1, 10**9))

    def shape(name: str) -> tuple[int, ...] | None:
        info = infos.get(name)
        return info.shape if info is not None else None

    def new_space(size: int, source: str | None) -> list[tuple[int, int]]:
        space_id = next(counter)
        union.find(space_id)
        if source is not None:
            sources.setdefault(space_id, []).append(source)
        else:
            locked.add(space_id)
        return [(space_id, size)]

    def lock_tensor(name: str) -> None:
        for space_id, _ in segments.get(name, []):
            locked.add(space_id)

    for value in model.graph.input:
        value_shape = shape(value.name)
        if value.name not in initializers and value_shape and len(value_shape) >= 2:
            segments[value.name] = new_space(value_shape[1], None)
            channel_axis[value.name] = 1

    for node in model.graph.node:
        op = node.op_type
        attrs = _attrs(node)
        data_inputs = [i for i in node.input if i and i not in initializers]
        out = node.output[0] if node.output else ""
        out_shape = shape(out) if out else None
        if op in _CONV_OPS and out_shape is not None and len(node.input) > 1:
            in_shape = shape(node.input[0])
            group = int(attrs.get("group", 1))  # type: ignore[call-overload]
            if in_shape is not None and group > 1 and group == in_shape[1] == out_shape[1]:
                segments[out] = list(segments.get(node.input[0], new_space(out_shape[1], None)))
            elif group > 1:
                # Grouped (not depthwise) convs need channel counts divisible by the group: left whole.
                lock_tensor(node.input[0])
                segments[out] = new_space(out_shape[1], None)
            else:
                segments[out] = new_space(out_shape[1], node.name if node.input[1] in initializers else None)
                if node.input[1] in initializers and node.input[1] not in stored:
                    dequantized.add(node.name)
            channel_axis[out] = 1
        elif op in _MATMUL_OPS and out_shape is not None and len(node.input) > 1:
            weight_name = node.input[1]
            axis = len(out_shape) - 1
            if weight_name in initializers:
                if op == "Gemm" and attrs.get("transA"):
                    lock_tensor(node.input[0])
                segments[out] = new_space(out_shape[axis], node.name)
                if weight_name not in stored:
                    dequantized.add(node.name)
            else:
                for name in data_inputs:
                    lock_tensor(name)
                segments[out] = new_space(out_shape[axis], None)
            channel_axis[out] = axis
        elif op == "Flatten" and out_shape is not None:
            in_shape = shape(node.input[0])
            if in_shape is not None and len(in_shape) == 4 and in_shape[2] * in_shape[3] == 1 and \
                    int(attrs.get("axis", 1)) == 1:  # type: ignore[call-overload]
                segments[out] = list(segments.get(node.input[0], new_space(out_shape[1], None)))
                channel_axis[out] = 1
            else:
                lock_tensor(node.input[0])
                segments[out] = new_space(out_shape[-1], None)
                channel_axis[out] = len(out_shape) - 1
        elif op == "Concat" and out_shape is not None:
            axis = int(attrs.get("axis", 0))  # type: ignore[call-overload]
            axis = axis % len(out_shape)
            first = node.input[0]
            if axis == channel_axis.get(first, -1) and all(i in segments for i in node.input):
                segments[out] = [seg for i in node.input for seg in segments[i]]
                channel_axis[out] = axis
            else:
                for name in data_inputs:
                    lock_tensor(name)
                segments[out] = new_space(out_shape[1] if len(out_shape) > 1 else out_shape[0], None)
                channel_axis[out] = 1 if len(out_shape) > 1 else 0
        elif op in _CHANNEL_PRESERVING and out_shape is not None and data_inputs:
            carriers = [i for i in data_inputs if i in segments and _carries_channels(shape(i), out_shape,
                                                                                   channel_axis[i])]
            if not carriers:
                for name in data_inputs:
                    lock_tensor(name)
                if not out_shape:  # a scalar (a dynamic quantizer's scale) has no channels
                    continue
                axis = 1 if len(out_shape) > 1 else 0
                segments[out] = new_space(out_shape[axis], None)
                channel_axis[out] = axis
                continue
            base = segments[carriers[0]]
            for other in carriers[1:]:
                if len(segments[other]) != len(base) or [s for _, s in segments[other]] != [s for _, s in base]:
                    lock_tensor(other)
                    for space_id, _ in base:
                        locked.add(space_id)
                    continue
                for (a, _), (b, _) in zip(base, segments[other], strict=True):
                    union.union(a, b)
            # Inputs that broadcast along channels (scalars, [C,1,1] params) are initializers: fine.
            for name in data_inputs:
                if name not in carriers and name in segments and op in _ELEMENTWISE_BINARY:
                    lock_tensor(name)
                    if _per_channel(shape(name), out_shape, channel_axis[carriers[0]]):
                        # Computed per channel (a per-channel dynamic quantizer's weight scales times the input's
                        # scale): the pruner slices stored parameters only, so these channels stay.
                        for space_id, _ in base:
                            locked.add(space_id)
            segments[out] = list(base)
            channel_axis[out] = channel_axis[carriers[0]]
            for extra in node.output[1:]:
                extra_shape = shape(extra) if extra else None
                if extra and extra_shape is not None and len(extra_shape) == len(out_shape):
                    segments[extra] = list(base)
                    channel_axis[extra] = channel_axis[carriers[0]]
        else:
            for name in data_inputs:
                lock_tensor(name)
            for output in node.output:
                output_shape = shape(output) if output else None
                if output and output_shape:
                    axis = 1 if len(output_shape) > 1 else 0
                    segments[output] = new_space(output_shape[axis], None)
                    channel_axis[output] = axis
    for value in model.graph.output:
        lock_tensor(value.name)
    return ChannelGroups(segments=segments, channel_axis=channel_axis, sources=sources, locked=locked, union=union,
                         dequantized=dequantized)


def _per_channel(in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...], axis: int) -> bool:
    """True if a tensor broadcast against the output (aligned to the right) has one entry per channel of `axis`."""
    if not in_shape:
        return False
    param_axis = len(in_shape) - (len(out_shape) - axis)
    return 0 <= param_axis < len(in_shape) and in_shape[param_axis] == out_shape[axis] > 1


def _carries_channels(in_shape: tuple[int, ...] | None, out_shape: tuple[int, ...], axis: int) -> bool:
    """True if a tensor has the output's channels on `axis` (not broadcast)."""
    if in_shape is None or len(in_shape) != len(out_shape) or axis >= len(in_shape):
        return False
    return in_shape[axis] == out_shape[axis] and in_shape[axis] > 1


def kept_channels(channels: int, ratio: float, round_to: int = 1) -> int:
    """floor(C x (1 - ratio)), rounded down to a multiple of round_to, at least one (multiple)."""
    kept = math.floor(channels * (1.0 - ratio) + 1e-9)
    if round_to > 1:
        kept = (kept // round_to) * round_to
    return max(min(channels, round_to if round_to > 1 else 1), min(kept, channels))


def prune_model(
    model: onnx.ModelProto,
    ratio_for: Callable[[str], tuple[float, int]],
) -> onnx.ModelProto:
    """Return a pruned copy; `ratio_for(node_name)` gives (prune_ratio, round_to) of a producing node."""
    model = fold_constant_identities(_copy(model))
    groups = analyze_channel_groups(model)
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    nodes_by_name = {node.name: node for node in model.graph.node}
    keep: dict[int, np.ndarray] = {}
    for root, producers in groups.prunable_spaces().items():
        ratio, round_to = ratio_for(producers[0])
        if ratio <= 0:
            continue
        importance = None
        for name in producers:
            node = nodes_by_name[name]
            if node.input[1] not in weights:
                continue  # a dequantized weight: quantized models are pruned before quantization
            weight = weights[node.input[1]]
            per_channel = _output_channel_l1(node, weight)
            importance = per_channel if importance is None else importance + per_channel
        if importance is None:
            continue
        count = kept_channels(importance.size, ratio, round_to)
        if count >= importance.size:
            continue
        keep[root] = np.sort(np.argsort(-importance, kind="stable")[:count])
    if not keep:
        return model
    _apply_pruning(model, groups, keep, weights)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _output_channel_l1(node: onnx.NodeProto, weight: np.ndarray) -> np.ndarray:
    attrs = _attrs(node)
    if node.op_type in {"Conv"}:
        return np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)
    if node.op_type == "ConvTranspose":
        return np.abs(weight).transpose(1, 0, 2, 3).reshape(weight.shape[1], -1).sum(axis=1)
    if node.op_type == "Gemm" and attrs.get("transB"):
        return np.abs(weight).sum(axis=1)
    return np.abs(weight).sum(axis=0)


def _indices_for(segments: list[tuple[int, int]], groups: ChannelGroups, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Kept channel indices of a tensor (its channel axis), across Concat segments."""
    parts: list[np.ndarray] = []
    offset = 0
    for space_id, size in segments:
        root = groups.space(space_id)
        kept = keep.get(root)
        parts.append(offset + (kept if kept is not None else np.arange(size)))
        offset += size
    return np.concatenate(parts) if parts else np.arange(0)


def fold_constant_identities(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace Identity nodes of initializers by initializers of their own, in place; returns the model.

    The TorchScript exporter hands one initializer to several layers through Identity nodes (weights it found
    equal, such as the zero biases of freshly initialised BatchNorms): pruned to different channels, each
    layer needs a copy of its own.
    """
    initializers = {init.name: init for init in model.graph.initializer}
    graph_outputs = {value.name for value in model.graph.output}
    kept_nodes = []
    for node in model.graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in initializers \
                and node.output and node.output[0] not in graph_outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
            initializers[copy.name] = copy
            continue
        kept_nodes.append(node)
    if len(kept_nodes) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(kept_nodes)
    return model


def _apply_pruning(model: onnx.ModelProto, groups: ChannelGroups, keep: dict[int, np.ndarray],
                   weights: dict[str, np.ndarray]) -> None:
    # Each node's sliced parameters, by (node index, input position): a parameter that several nodes read is
    # sliced for each of them on its own (into a copy where the slices differ).
    new_inputs: dict[tuple[int, int], np.ndarray] = {}
    current_node = -1
    current_inputs: list[str] = []

    def sliced(name: str, axis: int, indices: np.ndarray) -> None:
        for position, input_name in enumerate(current_inputs):
            if input_name != name:
                continue
            array = new_inputs.get((current_node, position), weights[name])
            if array.ndim > axis and array.shape[axis] != indices.size:
                new_inputs[(current_node, position)] = np.take(array, indices, axis=axis)

    def kept_of(tensor: str) -> np.ndarray | None:
        segs = groups.segments.get(tensor)
        if not segs:
            return None
        indices = _indices_for(segs, groups, keep)
        return indices if indices.size != sum(size for _, size in segs) else None

    for index, node in enumerate(model.graph.node):
        current_node, current_inputs = index, list(node.input)
        op = node.op_type
        attrs = _attrs(node)
        out_kept = kept_of(node.output[0]) if node.output else None
        in_kept = kept_of(node.input[0]) if node.input else None
        if op in _CONV_OPS:
            group = int(attrs.get("group", 1))  # type: ignore[call-overload]
            weight_name = node.input[1]
            if weight_name not in weights:
                continue
            out_axis, in_axis = (1, 0) if op == "ConvTranspose" else (0, 1)
            if out_kept is not None:
                sliced(weight_name, out_axis, out_kept)
                if len(node.input) > 2 and node.input[2] in weights:
                    sliced(node.input[2], 0, out_kept)
                # A ConvInteger's weight zero points, one per output channel.
                _slice_per_channel(sliced, weights, node.input[3:], weights[weight_name].shape[out_axis], out_kept)
            if group > 1 and out_kept is not None and weights[weight_name].shape[in_axis] == 1:
                # Depthwise: the group count follows the kept channels.
                for attribute in node.attribute:
                    if attribute.name == "group":
                        attribute.i = int(out_kept.size)
            elif in_kept is not None and group == 1:
                sliced(weight_name, in_axis, in_kept)
        elif op == "Gemm":
            weight_name = node.input[1]
            if weight_name not in weights:
                continue
            out_axis, in_axis = (0, 1) if attrs.get("transB") else (1, 0)
            if out_kept is not None:
                sliced(weight_name, out_axis, out_kept)
                if len(node.input) > 2 and node.input[2] in weights and weights[node.input[2]].ndim >= 1 \
                        and weights[node.input[2]].shape[-1] > 1:
                    sliced(node.input[2], weights[node.input[2]].ndim - 1, out_kept)
            if in_kept is not None:
                sliced(weight_name, in_axis, in_kept)
        elif op in _MATMUL_OPS:  # MatMul and its integer forms (weight [K, N])
            weight_name = node.input[1]
            if weight_name not in weights:
                continue
            if out_kept is not None:
                # Per-column parameters of the integer forms: zero points, scales, a bias.
                _slice_per_channel(sliced, weights, node.input[2:], weights[weight_name].shape[-1], out_kept)
                sliced(weight_name, weights[weight_name].ndim - 1, out_kept)
            if in_kept is not None:
                sliced(weight_name, weights[weight_name].ndim - 2, in_kept)
        elif out_kept is not None:
            # Channel-preserving ops: per-channel parameters (BN, biases, PRelu slopes, layer scales) follow the
            # channels, whichever input they are (exporters write a bias Add as Add(bias, x) too).
            axis = groups.channel_axis.get(node.output[0], 1)
            out_rank = len(next((v.type.tensor_type.shape.dim for v in model.graph.value_info
                                 if v.name == node.output[0]), [])) or None
            for name in node.input:
                if name not in weights:
                    continue
                array = weights[name]
                if op == "BatchNormalization" and array.ndim == 1:
                    sliced(name, 0, out_kept)
                elif array.ndim >= 1 and array.size > 1:
                    # Broadcast parameters align to the right: their channel axis counts from the end.
                    rank = out_rank or max(array.ndim, axis + 1)
                    param_axis = array.ndim - (rank - axis)
                    if 0 <= param_axis < array.ndim:
                        sliced(name, param_axis, out_kept)
    _write_sliced(model, new_inputs)
    # Intermediate shapes changed: let the runtime re-infer them.
    del model.graph.value_info[:]
    logger.debug("pruned %d channel groups", len(keep))


def _slice_per_channel(sliced: Callable[[str, int, np.ndarray], None], weights: dict[str, np.ndarray],
                       names: Iterable[str], channels: int, kept: np.ndarray) -> None:
    """Slice the layer's one-dimensional parameters of one entry per output channel (`channels` of them)."""
    for name in names:
        if name in weights and weights[name].ndim == 1 and weights[name].shape[0] == channels > 1:
            sliced(name, 0, kept)


def _write_sliced(model: onnx.ModelProto, new_inputs: dict[tuple[int, int], np.ndarray]) -> None:
    """Store each node's sliced parameters: in place where no other node reads the parameter, else as a copy."""
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    initializers = {init.name: init for init in model.graph.initializer}
    replaced: dict[str, np.ndarray] = {}
    copies: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
    nodes = list(model.graph.node)
    for (index, position), array in sorted(new_inputs.items(), key=lambda item: item[0]):
        node = nodes[index]
        name = node.input[position]
        if readers.get(name, 0) <= 1:
            replaced[name] = array
            continue
        signature = (name, array.tobytes(), array.shape)
        copy_name = copies.get(signature)
        if copy_name is None:
            copy_name = copies[signature] = f"{name}__pruned_{len(copies)}"
            model.graph.initializer.append(numpy_helper.from_array(array, copy_name))
        node.input[position] = copy_name
    for name, array in replaced.items():
        initializers[name].CopyFrom(numpy_helper.from_array(array, name))
