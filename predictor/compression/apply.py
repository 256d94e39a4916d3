"""Applying a compression config to a model for real: prune, sparsify, then int4 / int8 / fp16.

This is the ground truth the predictor is held against (`latpred measure`) and the way the profiler
builds compressed kernels, so both see exactly what onnxruntime's own tools produce. Nothing here
executes the model: int8 takes synthesized activation ranges instead of calibration runs.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from predictor.compression.config import CompressionConfig
from predictor.compression.pruning import prune_model
from predictor.errors import ConfigError, InvalidModelError
from predictor.kernels.keys import name_unnamed_nodes
from predictor.runtime.optimizer import RuntimeSpec, optimize_model

__all__ = [
    "apply_config",
    "fold_for_quantization",
    "quantize_dynamic_int8",
    "quantize_int8",
    "sparsify_weights",
    "synthesize_activation_ranges",
]

logger = logging.getLogger(__name__)

_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_INT8_EXTRA_OPTIONS = {"WeightSymmetric": True, "ActivationSymmetric": False}


def apply_config(model: onnx.ModelProto, config: CompressionConfig) -> onnx.ModelProto:
    """Return the model compressed as the config says (shapes must be fixed)."""
    compressed = onnx.ModelProto()
    compressed.CopyFrom(model)
    name_unnamed_nodes(compressed)
    config.check_patterns(node.name for node in compressed.graph.node)
    if config.is_identity:
        return compressed

    def ratio_for(node_name: str) -> tuple[float, int]:
        resolved = config.resolve(node_name)
        return resolved.prune_ratio, resolved.round_to

    if any(config.resolve(n.name).prune_ratio > 0 for n in compressed.graph.node if n.op_type in _WEIGHT_OPS):
        compressed = prune_model(compressed, ratio_for)
    sparsify_weights(compressed, config)
    bits = {node.name: config.resolve(node.name).bits for node in compressed.graph.node}
    int4_nodes = [n.name for n in compressed.graph.node if bits[n.name] == 4 and n.op_type in {"MatMul", "Gemm"}]
    if int4_nodes:
        compressed = quantize_int4(compressed, int4_nodes)
    dynamic = {node.name for node in compressed.graph.node if config.resolve(node.name).dynamic_int8}
    int8_nodes = [name for name, b in bits.items() if b == 8 and name not in dynamic]
    _refuse_int8_again(compressed, static=bool(int8_nodes), dynamic=bool(dynamic))
    if int8_nodes:
        everything = len(int8_nodes) == len(bits)
        options = config.resolve("")
        compressed = quantize_int8(compressed, None if everything else int8_nodes, per_channel=options.per_channel,
                                   activation_type=options.activation_type)
    if dynamic:
        compressed = quantize_dynamic_int8(compressed, None if len(dynamic) == len(bits) else sorted(dynamic))
    fp16_nodes = {name for name, b in bits.items() if b == 16}
    if fp16_nodes:
        try:
            compressed = convert_fp16(compressed, fp16_nodes)
        except ConfigError as exc:
            already = _int8_layer(model)  # the file as it came: int8 that this config made is no reason
            if already is None:
                raise
            raise ConfigError(f"{exc} (this model is int8 already: {already[0]} layer '{already[1]}'; convert the "
                              "float model to fp16 instead)") from exc
    return compressed


def _int8_layer(model: onnx.ModelProto) -> tuple[str, str] | None:
    """Where the model is int8 already, the form and name of one layer that shows it (("QDQ", "conv1"),
    ("MatMulInteger", "fc")), QDQ first; None for a model without int8 layers."""
    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    integer = None
    for node in model.graph.node:
        if node.op_type in _WEIGHT_OPS and len(node.input) > 1 and node.input[1] in dequantized:
            return "QDQ", node.name
        if integer is None and node.op_type in _INT8_LAYER_OPS:
            integer = node.op_type, node.name
    return integer


def _refuse_int8_again(model: onnx.ModelProto, static: bool, dynamic: bool) -> None:
    """Quantizing an int8 model to int8 again is refused, saying why: static int8 over QDQ layers adds a second
    QDQ pair to every activation, and over dynamic int8 layers the quantizer fails; dynamic int8 over QDQ layers
    fails too. Dynamic int8 over dynamic int8 leaves those layers as they are (the answer says what changed nothing)."""
    if not (static or dynamic):
        return
    already = _int8_layer(model)
    if already is None or (not static and already[0] != "QDQ"):
        return
    asked = "bits 8" if static else "bits 8 with dynamic quantization"
    raise ConfigError(f"{asked} cannot quantize this model again: it is int8 already ({already[0]} layer "
                      f"'{already[1]}'); send the float model, or a config without bits 8")


def sparsify_weights(model: onnx.ModelProto, config: CompressionConfig) -> None:
    """Zero weights of Conv/Gemm/MatMul by magnitude, in place (unstructured or 2:4 along the reduction axis)."""
    initializers = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        resolved = config.resolve(node.name)
        if resolved.sparsity <= 0 and resolved.sparsity_pattern != "2:4":
            continue
        init = initializers[node.input[1]]
        weight = numpy_helper.to_array(init).copy()
        if resolved.sparsity_pattern == "2:4":
            weight = _two_four(weight, transposed=node.op_type == "Gemm" and _gemm_trans_b(node))
        else:
            count = int(np.floor(weight.size * resolved.sparsity))
            if count:
                order = np.argsort(np.abs(weight), axis=None, kind="stable")[:count]
                weight.reshape(-1)[order] = 0
        init.CopyFrom(numpy_helper.from_array(weight, init.name))


def _gemm_trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _two_four(weight: np.ndarray, transposed: bool) -> np.ndarray:
    """Zero the 2 smallest of every 4 consecutive weights along the reduction (input-channel) axis."""
    if weight.ndim == 2:
        view = weight if transposed else weight.T  # rows: outputs, columns: reduction axis
    else:
        view = weight.reshape(weight.shape[0], weight.shape[1], -1).transpose(0, 2, 1).reshape(-1, weight.shape[1])
    rows, cols = view.shape
    usable = cols - cols % 4
    if usable == 0:
        return weight
    groups = np.ascontiguousarray(view[:, :usable]).reshape(rows, -1, 4)
    smallest = np.argsort(np.abs(groups), axis=-1)[..., :2]
    np.put_along_axis(groups, smallest, 0, axis=-1)
    view = view.copy()
    view[:, :usable] = groups.reshape(rows, usable)
    if weight.ndim == 2:
        return view if transposed else view.T.copy()
    k = weight.reshape(weight.shape[0], weight.shape[1], -1).shape[2]
    return view.reshape(weight.shape[0], k, weight.shape[1]).transpose(0, 2, 1).reshape(weight.shape).copy()


def fold_for_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold BatchNorm into convs and constants into initializers (onnxruntime's basic level).

    This is the pre-processing onnxruntime's quantization docs ask for; Conv names are kept. It runs under
    the enclosing optimizer limits, as optimize_model does.
    """
    try:
        folded = optimize_model(model, RuntimeSpec(), level="basic")
    except InvalidModelError as exc:
        raise InvalidModelError(f"cannot prepare the model for quantization: {exc}") from exc
    folded.ir_version = min(folded.ir_version, model.ir_version or folded.ir_version)
    return folded


def quantize_int8(model: onnx.ModelProto, nodes: list[str] | None = None, per_channel: bool = True,
                  activation_type: str = "uint8") -> onnx.ModelProto:
    """Static QDQ int8, as onnxruntime's quantizer produces it, without running the model.

    Weights int8 (per channel or per tensor), activations uint8 or int8. onnxruntime's own QDQ quantizer does
    the rewrite, with the arguments `quantize_static` gives it; only the activation ranges are synthesized
    instead of calibrated (an uploaded model is never executed). Latency does not depend on scale values, and
    the synthesized ranges keep the signs calibration would see (see `synthesize_activation_ranges`), which
    is what decides onnxruntime's fusions. Per-tensor and per-channel weights, uint8 and int8 activations are
    other kernels (on this host's CPU a ResNet-18 ran per tensor in 43 ms, per channel in 53 ms).
    `nodes`: only these nodes (None: all).
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer, update_opset_version
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    folded = fold_for_quantization(model)
    folded_names = {node.name for node in folded.graph.node}
    selected = None if nodes is None else [name for name in nodes if name in folded_names]
    if selected == []:
        return folded
    # The defaults quantize_static fills in when it is called with only these arguments.
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with tempfile.TemporaryDirectory(prefix="latpred-q8-") as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(folded, source)
        try:
            with _quiet_root_logger():
                inferred = load_model_with_shape_infer(source)
                ranges = synthesize_activation_ranges(inferred, op_types)
                activations = QuantType.QInt8 if activation_type == "int8" else QuantType.QUInt8
                quantizer = QDQQuantizer(
                    update_opset_version(inferred, QuantType.QInt8), per_channel, False, QuantType.QInt8,
                    activations, ranges, selected or [], [], op_types, dict(_INT8_EXTRA_OPTIONS),
                )
                quantizer.quantize_model()
                quantizer.model.save_model_to_file(str(target), False)
        except Exception as exc:  # the quantizer raises many unrelated types
            raise ConfigError(f"int8 quantization failed: {exc}") from exc
        quantized = onnx.load(str(target))
    quantized.ir_version = folded.ir_version
    return name_unnamed_nodes(quantized)


def quantize_dynamic_int8(model: onnx.ModelProto, nodes: list[str] | None = None) -> onnx.ModelProto:
    """Dynamic int8 as onnxruntime's `quantize_dynamic` makes it (its defaults: int8 weights per tensor, the op
    types of its integer registry), for `nodes` (None: all). Nothing is calibrated: ranges are taken at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="latpred-dq8-") as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, source)
        try:
            with _quiet_root_logger():
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
        except Exception as exc:  # the quantizer raises many unrelated types
            raise ConfigError(f"dynamic int8 quantization failed: {exc}") from exc
        quantized = onnx.load(str(target))
    quantized.ir_version = model.ir_version
    return name_unnamed_nodes(restore_layer_names(quantized, {node.name for node in model.graph.node}))


# The ops a quantizer turns a layer into; it renames them ("conv1_quant", "fc_MatMul_quant", "fc_Q4").
_QUANTIZED_LAYER_OPS = {"ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                        "QLinearConv", "QLinearMatMul", "MatMulNBits"}
# The int8 ones among them: dynamic int8 (quantize_dynamic, and what onnxruntime's optimizer fuses it into) and the
# QOperator format. QDQ layers are float ops whose weight a DequantizeLinear computes.
_INT8_LAYER_OPS = _QUANTIZED_LAYER_OPS - {"MatMulNBits"}


def restore_layer_names(model: onnx.ModelProto, layer_names: set[str]) -> onnx.ModelProto:
    """Give each quantized layer the name of the layer it came from again, in place; returns the model.

    Configs name layers by the user's node names, and kernels report them: a layer onnxruntime's quantizer
    renamed to "<name>_quant" (or "<name>_MatMul_quant" after splitting a Gemm, "<name>_Q4") is named <name>
    again where no other node has that name.
    """
    taken = {node.name for node in model.graph.node}
    for node in model.graph.node:
        if node.op_type not in _QUANTIZED_LAYER_OPS or node.name in layer_names:
            continue
        candidates = [name for name in layer_names if node.name.startswith(f"{name}_") and name not in taken]
        if candidates:
            node.name = max(candidates, key=len)
            taken.add(node.name)
    return model


class _DropQuantizerAdvice(logging.Filter):
    """Quiet the quantizer's root-logger chatter: pre-processing advice (fold_for_quantization did it) and
    per-channel notes on 1-D weights (BatchNorm scales that cannot fold), which it handles per tensor."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "pre-process" not in message and "is out-of-range for weight" not in message


@contextmanager
def _quiet_root_logger() -> Iterator[None]:
    advice = _DropQuantizerAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def quantize_int4(model: onnx.ModelProto, nodes: list[str]) -> onnx.ModelProto:
    """Weight-only int4 (MatMulNBits) for these MatMul/Gemm nodes, as onnxruntime's MatMulNBitsQuantizer writes it
    with its defaults (blocks of 128, asymmetric)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    prepared = _gemm_to_matmul(model, set(nodes))
    chatty = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # it logs every node it skips at INFO
    try:
        quantizer = MatMulNBitsQuantizer(prepared, nodes_to_include=list(nodes))
        quantizer.process()
    except Exception as exc:  # the quantizer raises many unrelated types
        raise ConfigError(f"int4 quantization failed: {exc}") from exc
    finally:
        chatty.setLevel(level)
    result = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    result.ir_version = model.ir_version
    return name_unnamed_nodes(restore_layer_names(result, {node.name for node in model.graph.node}))


def _gemm_to_matmul(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """Rewrite selected 2-D Gemm nodes (alpha=beta=1) as MatMul (+ Add), keeping the node name on the MatMul."""
    from onnx import helper

    result = onnx.ModelProto()
    result.CopyFrom(model)
    initializers = {init.name: init for init in result.graph.initializer}
    new_nodes: list[onnx.NodeProto] = []
    for node in result.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.name not in names or attrs.get("transA") or \
                attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0 or node.input[1] not in initializers:
            new_nodes.append(node)
            continue
        weight_init = initializers[node.input[1]]
        if attrs.get("transB"):
            weight = numpy_helper.to_array(weight_init).T.copy()
            weight_init.CopyFrom(numpy_helper.from_array(weight, weight_init.name))
        product = node.output[0] if len(node.input) < 3 or not node.input[2] else f"{node.name}_matmul_out"
        new_nodes.append(helper.make_node("MatMul", [node.input[0], node.input[1]], [product], name=node.name))
        if product != node.output[0]:
            new_nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                              name=f"{node.name}_bias"))
    del result.graph.node[:]
    result.graph.node.extend(new_nodes)
    return result


def convert_fp16(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """fp16 weights and activations for these nodes (casts at the boundaries), inputs/outputs kept fp32."""
    from onnxconverter_common import float16

    block = [node.name for node in model.graph.node if node.name not in nodes or node.op_type in _QDQ_OPS]
    try:
        with warnings.catch_warnings():
            # The converter warns once per weight it clamps into fp16 range: expected, not news.
            warnings.simplefilter("ignore", UserWarning)
            converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=block,
                                                         disable_shape_infer=False)
    except Exception as exc:  # the converter raises many unrelated types
        raise ConfigError(f"fp16 conversion failed: {exc}") from exc
    converted.ir_version = model.ir_version
    return name_unnamed_nodes(converted)


# Ranges instead of calibration. Latency does not depend on scale values, but onnxruntime's QDQ fusions
# depend on zero points: a Relu/Clip output calibrated to [0, max] gets zero point 0, which lets the Relu
# be dropped or fused, a Clip whose quantized range lies inside its bounds is removed. So a tensor that
# calibration would always see non-negative gets [0, max], a Clip output its bounds, every other tensor a
# symmetric range.
_ACTIVATION_ABS_MAX = 4.0
_UNIT_INTERVAL_OPS = {"Sigmoid", "HardSigmoid", "Softmax"}
_NON_NEGATIVE_OPS = {"Relu", "Abs", "Exp", "Softplus", "Sqrt", "ReduceL2", "ReduceSumSquare"}
# Outputs with the range of the first input: data movement, pooling, max/min/mean reductions.
_RANGE_PRESERVING_OPS = {
    "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Reshape", "Transpose", "Flatten", "Squeeze",
    "Unsqueeze", "Identity", "Resize", "Upsample", "Slice", "Split", "Gather", "GatherElements", "Expand", "Tile",
    "Pad", "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "ReduceMean", "Dropout",
}
# Outputs that are non-negative when every data input is.
_MONOTONE_OPS = {"Add", "Mul", "Div", "Concat", "Max", "Min", "Sum", "Mean", "Where"}


def synthesize_activation_ranges(model: onnx.ModelProto, op_types: list[str]) -> Any:
    """The activation ranges min-max calibration would give, up to scale, without running the model.

    `model` is shape-inferred; the tensors are those onnxruntime's calibrator collects (float, non-constant
    inputs and outputs of nodes of `op_types`). Returns onnxruntime's TensorsData.
    """
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

    known = _propagate_ranges(model)
    value_infos = {vi.name: vi for vi in model.graph.value_info}
    value_infos.update({vi.name: vi for vi in model.graph.output})
    value_infos.update({vi.name: vi for vi in model.graph.input})
    initializers = {init.name for init in model.graph.initializer}
    dtypes = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16}
    wanted = set(op_types)
    ranges: dict[str, Any] = {}
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        for name in [*node.input, *node.output]:
            info = value_infos.get(name)
            if name in ranges or name in initializers or info is None or not info.type.HasField("tensor_type"):
                continue
            dtype = dtypes.get(info.type.tensor_type.elem_type)
            if dtype is None:
                continue
            low, high = known.get(name, (-_ACTIVATION_ABS_MAX, _ACTIVATION_ABS_MAX))
            ranges[name] = TensorData(lowest=np.array([low], dtype=dtype), highest=np.array([high], dtype=dtype))
    return TensorsData(CalibrationMethod.MinMax, ranges)


def _propagate_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """(low, high) of the tensors whose range is not simply symmetric, in one pass in graph order."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    ranges: dict[str, tuple[float, float]] = {}

    def non_negative(name: str) -> bool:
        values = constants.get(name)
        if values is not None:
            return values.size > 0 and np.issubdtype(values.dtype, np.number) and bool(np.all(values >= 0))
        return name in ranges and ranges[name][0] >= 0

    def scalar_input(node: onnx.NodeProto, index: int) -> float | None:
        values = constants.get(node.input[index]) if len(node.input) > index and node.input[index] else None
        return float(values.reshape(-1)[0]) if values is not None and values.size == 1 else None

    for node in model.graph.node:
        op, inputs = node.op_type, [name for name in node.input if name]
        produced: tuple[float, float] | None = None
        if op in _UNIT_INTERVAL_OPS:
            produced = (0.0, 1.0)
        elif op in _NON_NEGATIVE_OPS:
            produced = (0.0, _ACTIVATION_ABS_MAX)
        elif op == "Clip":
            attrs = {a.name: a.f for a in node.attribute}  # opset < 11 keeps the bounds in attributes
            low, high = attrs.get("min", scalar_input(node, 1)), attrs.get("max", scalar_input(node, 2))
            if inputs and non_negative(inputs[0]):
                low = 0.0 if low is None else max(low, 0.0)
            low = -_ACTIVATION_ABS_MAX if low is None else low
            produced = (low, high if high is not None else max(low, 0.0) + _ACTIVATION_ABS_MAX)
        elif op in _RANGE_PRESERVING_OPS:
            if inputs and non_negative(inputs[0]):
                produced = ranges.get(inputs[0], (0.0, _ACTIVATION_ABS_MAX))
        elif op in _MONOTONE_OPS:
            data = inputs[1:] if op == "Where" else inputs
            if data and all(non_negative(name) for name in data):
                produced = (0.0, _ACTIVATION_ABS_MAX)
        if produced is not None:
            ranges.update((output, produced) for output in node.output if output)
    return ranges
