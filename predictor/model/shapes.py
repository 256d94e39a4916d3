"""Tensor shapes from a source of truth: symbolic shape inference of the model, and of the graph the runtime runs.

Two questions, two answers:
- the shapes of a user's model (fixed inputs): onnxruntime's symbolic shape inference, which follows shape
  arithmetic (`Shape -> Gather -> Concat -> Expand`, as Hugging Face exports are full of) where ONNX's own
  inference stops; ONNX's inference fills in what it leaves open;
- the shapes of the runtime's optimized graph: every node is inferred from its own inputs, in graph order
  (ONNX's schema inference for standard ops, the runtime's own shape rules for its contrib ops: NCHWc blocks
  with their padded channels, channels-last int8 convs, fused and quantized ops). Nothing is carried over by
  node or tensor names, so whatever an exporter called its nodes, each kernel has the shapes it runs with.

A tensor whose shape cannot be inferred stays `None`; callers say so out loud.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["RuntimeShapes", "TensorInfo", "infer_model_shapes", "infer_runtime_shapes"]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorInfo:
    """Static shape and element type of one tensor (shape None where unknown)."""

    shape: Shape | None
    elem_type: int


def _info_of(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    shape: Shape | None = None
    if tensor_type.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        shape = tuple(dims) if all(d >= 0 for d in dims) else None
    return TensorInfo(shape=shape, elem_type=int(tensor_type.elem_type))


def _constant_infos(graph: onnx.GraphProto) -> dict[str, TensorInfo]:
    infos = {init.name: TensorInfo(tuple(int(d) for d in init.dims), int(init.data_type)) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    infos[node.output[0]] = TensorInfo(tuple(int(d) for d in attr.t.dims), int(attr.t.data_type))
    return infos


def infer_model_shapes(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Shapes and element types of every tensor of a model with fixed input shapes.

    ONNX's own inference first (fast); where it leaves tensors open, symbolic shape inference, which follows shape
    arithmetic, fills them in. Both run on a copy without the weight matrices (shape inference needs their shapes,
    not their values): a BERT-base took 3.7 s with its weights, 0.2 s without. Raises ValueError only if neither
    inference can read the model.
    """
    light = _without_weights(model)
    infos = _infer(light)
    if light is not model and not _complete(model, infos):
        infos = _infer(model)  # an inference that wanted a weight's values after all
    return infos


# Float initializers larger than this are weight matrices: their values never decide a shape.
_WEIGHT_BYTES = 256 * 1024
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its weight matrices' data left out (names, types and dims kept); the model itself if none."""
    heavy = [init for init in model.graph.initializer
             if init.data_type in _FLOAT_TYPES and init.ByteSize() > _WEIGHT_BYTES]
    if not heavy:
        return model
    heavy_names = {init.name for init in heavy}
    graph = onnx.GraphProto()
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if init.name in heavy_names:
            graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        else:
            graph.initializer.append(init)
    light = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    light.opset_import.extend(model.opset_import)
    light.graph.CopyFrom(graph)
    return light


def _infer(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    infos: dict[str, TensorInfo] = {}
    failures = []
    for name, infer in (("onnx", _onnx_inference), ("symbolic", _symbolic_inference)):
        try:
            inferred = infer(model)
        except Exception as exc:  # both inferences raise many unrelated exception types
            failures.append(f"{name} shape inference failed: {' '.join(str(exc).split())[:200]}")
            continue
        for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
            info = _info_of(value)
            known = infos.get(value.name)
            if known is None or (known.shape is None and info.shape is not None):
                infos[value.name] = info
        if name == "onnx" and _complete(model, infos):
            break
    if len(failures) == 2:
        raise ValueError("; ".join(failures))
    infos.update(_constant_infos(model.graph))
    return infos


def _complete(model: onnx.ModelProto, infos: Mapping[str, TensorInfo]) -> bool:
    """Whether every node output has a known shape."""
    for node in model.graph.node:
        for output in node.output:
            info = infos.get(output)
            if output and node.op_type != "Constant" and (info is None or info.shape is None):
                return False
    return True


def _symbolic_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's symbolic shape inference, driven as its `infer_shapes` drives it, except that an incomplete
    inference returns what it found: its own entry point then saves the model (weights included) into the working
    directory as "sym_shape_infer_temp.onnx" before it raises."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    quiet = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        inference._preprocess(model)
        while inference.run_:
            inference._infer_impl()
        inference._update_output_from_vi()
        return inference.out_mp_
    finally:
        quiet.setLevel(level)


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)


# ------------------------------------------------------------------------------ the runtime's optimized graph
_Rule = Callable[["_NodeView"], list[TensorInfo | None]]


@dataclass
class _NodeView:
    """One node of the optimized graph with what is known of its inputs."""

    node: onnx.NodeProto
    inputs: list[TensorInfo | None]
    arrays: Mapping[str, np.ndarray]
    nchwc_block: int = 8

    def attr(self, name: str, default: object = None) -> object:
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def shape(self, index: int) -> Shape | None:
        info = self.inputs[index] if index < len(self.inputs) else None
        return info.shape if info is not None else None

    def elem(self, index: int, default: int = TensorProto.FLOAT) -> int:
        info = self.inputs[index] if index < len(self.inputs) else None
        return info.elem_type if info is not None else default


@dataclass
class RuntimeShapes:
    """The optimized graph's tensors: shape and type of each, and which ones are in the NCHWc blocked layout
    (written by an NCHWc op other than ReorderOutput, or by an op that reads such a tensor)."""

    infos: dict[str, TensorInfo]
    blocked: set[str]


def infer_runtime_shapes(optimized: onnx.ModelProto, seed: Mapping[str, TensorInfo] | None = None,
                         nchwc_block: int = 8) -> RuntimeShapes:
    """Shape and element type of every tensor of an optimized graph, each node inferred from its inputs.

    `seed`: shapes known from elsewhere (the original model's inference); used only for a tensor whose node
    no rule covers, and only where the name is the original's (the runtime keeps the names of tensors it
    did not change). `nchwc_block`: the channel block of the runtime's NCHWc layout on the device (8 with
    AVX2, 16 with AVX-512): blocked tensors' channels are padded to it.
    """
    seed = seed or {}
    graph = optimized.graph
    blocked: set[str] = set()
    infos: dict[str, TensorInfo] = {value.name: _info_of(value) for value in graph.input}
    infos.update(_constant_infos(graph))
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer
              if _small_enough(init)}
    opsets = {entry.domain or "": int(entry.version) for entry in optimized.opset_import}
    for node in _topological(graph):
        if node.op_type == "Constant":
            continue
        view = _NodeView(node, [infos.get(name) if name else None for name in node.input], arrays, nchwc_block)
        outputs = _infer_node(view, opsets, optimized.ir_version)
        if node.domain == _NCHWC:
            if node.op_type != "ReorderOutput":
                blocked.update(o for o in node.output if o)
        elif any(name in blocked for name in node.input):
            # The runtime leaves a blocked tensor only to ops that run on the blocked layout as they are
            # (activations, binary ops, the activations it fuses later): what they write is blocked too.
            blocked.update(o for o in node.output if o)
        for position, output in enumerate(node.output):
            if not output:
                continue
            info = outputs[position] if position < len(outputs) else None
            if info is None or info.shape is None:
                info = seed.get(output, info)
            if info is not None:
                infos[output] = info
    return RuntimeShapes(infos=infos, blocked=blocked)


def _small_enough(init: onnx.TensorProto) -> bool:
    """Initializers whose values shape inference may need (shape vectors, axes, scales), not weights."""
    return math.prod(init.dims) <= 64 and init.data_type in (TensorProto.INT64, TensorProto.INT32,
                                                              TensorProto.FLOAT)


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where every node comes after its inputs' producers (the saved order if it is one)."""
    produced = {o for node in graph.node for o in node.output if o}
    available = {value.name for value in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progress = []
        rest = []
        for node in pending:
            if all(name in available or name not in produced for name in node.input):
                progress.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if not progress:  # a cycle (not a valid graph): keep the saved order for what is left
            ordered.extend(rest)
            break
        ordered.extend(progress)
        pending = rest
    return ordered


def _infer_node(view: _NodeView, opsets: Mapping[str, int], ir_version: int) -> list[TensorInfo | None]:
    node = view.node
    domain = node.domain or ""
    if domain == "ai.onnx":
        domain = ""
    rule = _RULES.get((domain, node.op_type))
    if rule is not None:
        try:
            return rule(view)
        except (TypeError, ValueError, IndexError, ZeroDivisionError):
            return []
    if domain == "":
        return _onnx_node_inference(view, opsets.get("", 17), ir_version)
    return []


def _onnx_node_inference(view: _NodeView, opset: int, ir_version: int) -> list[TensorInfo | None]:
    node = view.node
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset, domain="")
    except onnx.defs.SchemaError:
        return []
    input_types: dict[str, onnx.TypeProto] = {}
    input_data: dict[str, TensorProto] = {}
    for name, info in zip(node.input, view.inputs, strict=True):
        if not name or info is None:
            continue
        input_types[name] = helper.make_tensor_type_proto(info.elem_type, info.shape)
        if name in view.arrays:
            input_data[name] = numpy_helper.from_array(view.arrays[name], name)
    try:
        inferred = onnx.shape_inference.infer_node_outputs(
            schema, node, input_types, input_data, opset_imports=[helper.make_opsetid("", opset)],
            ir_version=ir_version)
    except Exception:  # inference errors come as several unrelated C++ exception types
        return []
    results: list[TensorInfo | None] = []
    for output in node.output:
        type_proto = inferred.get(output)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            results.append(None)
            continue
        value = helper.make_value_info(output, type_proto)
        results.append(_info_of(value))
    return results


# Rules for the runtime's own ops (onnxruntime's contrib op schemas, written again for their shapes).
def _conv_spatial(view: _NodeView, data: Shape, kernel: Sequence[int], channels_last: bool = False) -> list[int]:
    spatial = list(data[1:-1] if channels_last else data[2:])
    rank = len(spatial)
    strides = list(view.attr("strides") or [1] * rank)  # type: ignore[call-overload]
    dilations = list(view.attr("dilations") or [1] * rank)  # type: ignore[call-overload]
    pads = list(view.attr("pads") or [0] * (2 * rank))  # type: ignore[call-overload]
    auto_pad = view.attr("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    ceil_mode = bool(view.attr("ceil_mode", 0))
    result = []
    for axis, size in enumerate(spatial):
        extent = (kernel[axis] - 1) * dilations[axis] + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            result.append(-(-size // strides[axis]))
        elif auto_pad == "VALID":
            result.append((size - extent) // strides[axis] + 1)
        else:
            padded = size + pads[axis] + pads[axis + rank] - extent
            steps = -(-padded // strides[axis]) if ceil_mode else padded // strides[axis]
            result.append(steps + 1)
    return result


def _conv_like(data_index: int, weight_index: int, channels_last_attr: bool = False) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        data, weight = view.shape(data_index), view.shape(weight_index)
        if data is None or weight is None:
            return []
        channels_last = channels_last_attr and bool(view.attr("channels_last", 0))
        kernel = list(view.attr("kernel_shape") or weight[2:])  # type: ignore[call-overload]
        spatial = _conv_spatial(view, data, kernel, channels_last)
        shape = (data[0], *spatial, weight[0]) if channels_last else (data[0], weight[0], *spatial)
        return [TensorInfo(shape, _output_elem(view))]

    return rule


def _output_elem(view: _NodeView) -> int:
    """Quantized ops hand over their output zero point's type; the others their first input's."""
    op = view.node.op_type
    if op.startswith("QLinear") or op == "QGemm":
        zero_point = {"QLinearConv": 7, "QLinearAdd": 7, "QLinearMul": 7, "QGemm": 8, "QLinearMatMul": 7,
                      "QLinearConcat": 1}.get(op, 4)
        if op == "QGemm" and len(view.node.input) <= zero_point:
            return TensorProto.FLOAT
        return view.elem(zero_point, view.elem(0))
    return view.elem(0)


def _pool_like(channels_last_attr: bool = False, global_pool: bool = False, nhwc: bool = False) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        data = view.shape(0)
        if data is None:
            return []
        channels_last = nhwc or (channels_last_attr and bool(view.attr("channels_last", 0)))
        if global_pool:
            ones = [1] * (len(data) - 2)
            shape = (data[0], *ones, data[-1]) if channels_last else (data[0], data[1], *ones)
        else:
            kernel = list(view.attr("kernel_shape"))  # type: ignore[call-overload]
            spatial = _conv_spatial(view, data, kernel, channels_last)
            shape = (data[0], *spatial, data[-1]) if channels_last else (data[0], data[1], *spatial)
        return [TensorInfo(shape, _output_elem(view))]

    return rule


def _same_as(index: int = 0, outputs: int = 1) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        info = view.inputs[index] if index < len(view.inputs) else None
        if info is None:
            return []
        return [TensorInfo(info.shape, _output_elem(view))] * outputs

    return rule


def _broadcast(first: int, second: int) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        a, b = view.shape(first), view.shape(second)
        if a is None or b is None:
            return []
        rank = max(len(a), len(b))
        a_dims, b_dims = (1,) * (rank - len(a)) + a, (1,) * (rank - len(b)) + b
        shape = tuple(max(x, y) if 1 in (x, y) else x for x, y in zip(a_dims, b_dims, strict=True))
        return [TensorInfo(shape, _output_elem(view))]

    return rule


def _matmul_shape(a: Shape, b: Shape) -> Shape:
    if len(a) == 1:
        a = (1, *a)
        squeeze_front = True
    else:
        squeeze_front = False
    b_vector = len(b) == 1
    if b_vector:
        b = (*b, 1)
    batch_a, batch_b = a[:-2], b[:-2]
    rank = max(len(batch_a), len(batch_b))
    batch_a, batch_b = (1,) * (rank - len(batch_a)) + batch_a, (1,) * (rank - len(batch_b)) + batch_b
    batch = tuple(max(x, y) for x, y in zip(batch_a, batch_b, strict=True))
    shape = (*batch, a[-2], b[-1])
    if b_vector:
        shape = shape[:-1]
    if squeeze_front:
        shape = shape[:-2] + shape[-1:] if not b_vector else shape[:-1]
    return shape


def _matmul_like(first: int, second: int, out_elem: int | None = None) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        a, b = view.shape(first), view.shape(second)
        if a is None or b is None:
            return []
        if view.node.op_type == "FusedMatMul":
            a = _fused_matmul_operand(a, bool(view.attr("transBatchA", 0)), bool(view.attr("transA", 0)))
            b = _fused_matmul_operand(b, bool(view.attr("transBatchB", 0)), bool(view.attr("transB", 0)))
        return [TensorInfo(_matmul_shape(a, b), out_elem if out_elem is not None else _output_elem(view))]

    return rule


def _fused_matmul_operand(shape: Shape, trans_batch: bool, trans: bool) -> Shape:
    """An operand of FusedMatMul as it multiplies: `transBatch` moves dim 0 behind the other batch dims, then
    `trans` swaps the matrix dims (onnxruntime's contrib op definition)."""
    if trans_batch and len(shape) >= 3:
        shape = (*shape[1:-1], shape[0], shape[-1])
    if trans and len(shape) >= 2:
        shape = (*shape[:-2], shape[-1], shape[-2])
    return shape


def _gemm_like(first: int, second: int) -> _Rule:
    def rule(view: _NodeView) -> list[TensorInfo | None]:
        a, b = view.shape(first), view.shape(second)
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return []
        rows = a[1] if view.attr("transA", 0) else a[0]
        cols = b[0] if view.attr("transB", 0) else b[1]
        return [TensorInfo((rows, cols), _output_elem(view))]

    return rule


def _matmul_nbits(view: _NodeView) -> list[TensorInfo | None]:
    a = view.shape(0)
    if a is None:
        return []
    return [TensorInfo((*a[:-1], int(view.attr("N"))), view.elem(0))]  # type: ignore[call-overload]


def _reorder_input(view: _NodeView) -> list[TensorInfo | None]:
    data = view.shape(0)
    if data is None:
        return []
    if view.attr("channels_last", 0):
        data = (data[0], data[-1], *data[1:-1])
    block = view.nchwc_block
    return [TensorInfo((data[0], -(-data[1] // block) * block, *data[2:]), view.elem(0))]


def _reorder_output(view: _NodeView) -> list[TensorInfo | None]:
    data = view.shape(0)
    if data is None:
        return []
    channels = int(view.attr("channels", data[1]))  # type: ignore[call-overload]
    shape = (data[0], *data[2:], channels) if view.attr("channels_last", 0) else (data[0], channels, *data[2:])
    return [TensorInfo(shape, view.elem(0))]


def _nchwc_upsample(view: _NodeView) -> list[TensorInfo | None]:
    data = view.shape(0)
    scales = view.attr("scales")
    if data is None or not scales:
        return []
    factors = list(scales)  # type: ignore[call-overload]
    return [TensorInfo((data[0], data[1], *(int(d * f) for d, f in zip(data[2:], factors, strict=False))),
                       view.elem(0))]


def _attention(view: _NodeView) -> list[TensorInfo | None]:
    data, weight = view.shape(0), view.shape(1)
    if data is None:
        return []
    sizes = view.attr("qkv_hidden_sizes")
    if sizes:
        hidden = int(list(sizes)[2])  # type: ignore[call-overload]
    elif weight is not None:
        hidden = weight[-1] // 3
    else:
        hidden = data[-1]
    return [TensorInfo((*data[:-1], hidden), view.elem(0))]


def _multi_head_attention(view: _NodeView) -> list[TensorInfo | None]:
    query, value = view.shape(0), view.shape(2)
    if query is None:
        return []
    hidden = value[-1] if value is not None and len(value) == 3 else query[-1]
    return [TensorInfo((*query[:-1], hidden), view.elem(0))]


def _skip_layer_norm(view: _NodeView) -> list[TensorInfo | None]:
    data = view.inputs[0]
    if data is None or data.shape is None:
        return []
    stats = TensorInfo((*data.shape[:-1], 1), TensorProto.FLOAT)
    return [data, stats, stats, data]


def _dynamic_quantize_linear(view: _NodeView) -> list[TensorInfo | None]:
    data = view.shape(0)
    return [TensorInfo(data, TensorProto.UINT8), TensorInfo((), TensorProto.FLOAT),
            TensorInfo((), TensorProto.UINT8)]


def _qlinear_concat(view: _NodeView) -> list[TensorInfo | None]:
    shapes = [view.shape(i) for i in range(2, len(view.node.input), 3)]
    if not shapes or any(s is None for s in shapes):
        return []
    first = shapes[0]
    assert first is not None
    axis = int(view.attr("axis", 1)) % len(first)  # type: ignore[call-overload]
    total = sum(s[axis] for s in shapes if s is not None)
    return [TensorInfo((*first[:axis], total, *first[axis + 1:]), view.elem(2))]


_NCHWC = "com.microsoft.nchwc"
_MS = "com.microsoft"
_RULES: dict[tuple[str, str], _Rule] = {
    (_NCHWC, "Conv"): _conv_like(0, 1),
    (_NCHWC, "MaxPool"): _pool_like(),
    (_NCHWC, "AveragePool"): _pool_like(),
    (_NCHWC, "GlobalAveragePool"): _pool_like(global_pool=True),
    (_NCHWC, "GlobalMaxPool"): _pool_like(global_pool=True),
    (_NCHWC, "ReorderInput"): _reorder_input,
    (_NCHWC, "ReorderOutput"): _reorder_output,
    (_NCHWC, "Upsample"): _nchwc_upsample,
    (_MS, "FusedConv"): _conv_like(0, 1),
    (_MS, "NhwcConv"): _conv_like(0, 1, channels_last_attr=False),
    (_MS, "QLinearConv"): _conv_like(0, 3, channels_last_attr=True),
    (_MS, "NhwcMaxPool"): _pool_like(nhwc=True),
    (_MS, "QLinearAveragePool"): _pool_like(channels_last_attr=True),
    (_MS, "QLinearGlobalAveragePool"): _pool_like(channels_last_attr=True, global_pool=True),
    (_MS, "QLinearAdd"): _broadcast(0, 3),
    (_MS, "QLinearMul"): _broadcast(0, 3),
    (_MS, "QLinearSigmoid"): _same_as(0),
    (_MS, "QLinearLeakyRelu"): _same_as(0),
    (_MS, "QLinearSoftmax"): _same_as(0),
    (_MS, "QLinearConcat"): _qlinear_concat,
    (_MS, "QGemm"): _gemm_like(0, 3),
    (_MS, "FusedGemm"): _gemm_like(0, 1),
    (_MS, "FusedMatMul"): _matmul_like(0, 1),
    (_MS, "MatMulIntegerToFloat"): _matmul_like(0, 1, TensorProto.FLOAT),
    (_MS, "DynamicQuantizeMatMul"): _matmul_like(0, 1, TensorProto.FLOAT),
    (_MS, "MatMulNBits"): _matmul_nbits,
    (_MS, "Gelu"): _same_as(0),
    (_MS, "FastGelu"): _same_as(0),
    (_MS, "BiasGelu"): _same_as(0),
    (_MS, "QuickGelu"): _same_as(0),
    (_MS, "BiasAdd"): _same_as(0),
    (_MS, "BiasSoftmax"): _same_as(0),
    (_MS, "RotaryEmbedding"): _same_as(0),
    (_MS, "SkipLayerNormalization"): _skip_layer_norm,
    (_MS, "SkipSimplifiedLayerNormalization"): _skip_layer_norm,
    (_MS, "SimplifiedLayerNormalization"): _skip_layer_norm,
    (_MS, "LayerNormalization"): _skip_layer_norm,
    (_MS, "Attention"): _attention,
    (_MS, "MultiHeadAttention"): _multi_head_attention,
    ("", "DynamicQuantizeLinear"): _dynamic_quantize_linear,
}
