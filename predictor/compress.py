"""Applying a compression config to a model for real: prune, sparsify, then int4 / int8 / fp16.

This is the ground truth the predictor is held against (`latpred measure`) and the way the profiler
builds compressed kernels, so both see exactly what onnxruntime's own tools produce.
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from predictor.config import CompressionConfig
from predictor.errors import ConfigError, InvalidModelError
from predictor.kernels import name_unnamed_nodes
from predictor.pruning import prune_model

__all__ = ["apply_config", "fold_for_quantization", "quantize_int8", "sparsify_weights"]

logger = logging.getLogger(__name__)

_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
_CALIBRATION_SAMPLES = 2


def apply_config(model: onnx.ModelProto, config: CompressionConfig, seed: int = 0) -> onnx.ModelProto:
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
    int8_nodes = [name for name, b in bits.items() if b == 8]
    if int8_nodes:
        everything = len(int8_nodes) == len(bits)
        compressed = quantize_int8(compressed, None if everything else int8_nodes, seed=seed)
    fp16_nodes = {name for name, b in bits.items() if b == 16}
    if fp16_nodes:
        compressed = convert_fp16(compressed, fp16_nodes)
    return compressed


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

    This is the pre-processing onnxruntime's quantization docs ask for; Conv names are kept.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="latpred-fold-") as tmp:
        path = Path(tmp) / "folded.onnx"
        options.optimized_model_filepath = str(path)
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime's pybind errors
            raise InvalidModelError(f"cannot prepare the model for quantization: {exc}") from exc
        folded = onnx.load(str(path))
    folded.ir_version = min(folded.ir_version, model.ir_version or folded.ir_version)
    return folded


def quantize_int8(model: onnx.ModelProto, nodes: list[str] | None = None, seed: int = 0) -> onnx.ModelProto:
    """Static QDQ int8 with per-channel weights, as onnxruntime's quantizer produces it.

    Activations uint8, weights int8 per channel, min-max calibration on random inputs (latency does
    not depend on the calibration data). `nodes`: only these nodes (None: all).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folded = fold_for_quantization(model)
    rng = np.random.default_rng(seed)
    inputs = _input_arrays(folded, rng)

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([inputs] * _CALIBRATION_SAMPLES)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    folded_names = {node.name for node in folded.graph.node}
    selected = None if nodes is None else [name for name in nodes if name in folded_names]
    if selected == []:
        return folded
    with tempfile.TemporaryDirectory(prefix="latpred-q8-") as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(folded, source)
        try:
            with _quiet_root_logger():
                quantize_static(
                    str(source), str(target), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=selected,
                    extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
                )
        except Exception as exc:  # the quantizer raises many unrelated types
            raise ConfigError(f"int8 quantization failed: {exc}") from exc
        quantized = onnx.load(str(target))
    quantized.ir_version = folded.ir_version
    return name_unnamed_nodes(quantized)


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
    """Weight-only int4 (MatMulNBits, block 32, symmetric) for these MatMul/Gemm nodes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    prepared = _gemm_to_matmul(model, set(nodes))
    try:
        quantizer = MatMulNBitsQuantizer(prepared, bits=4, block_size=32, is_symmetric=True,
                                         nodes_to_include=list(nodes))
        quantizer.process()
    except Exception as exc:  # the quantizer raises many unrelated types
        raise ConfigError(f"int4 quantization failed: {exc}") from exc
    result = quantizer.model.model if hasattr(quantizer.model, "model") else quantizer.model
    result.ir_version = model.ir_version
    return name_unnamed_nodes(result)


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


def _input_arrays(model: onnx.ModelProto, rng: np.random.Generator) -> dict[str, np.ndarray]:
    initializers = {init.name for init in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = [d.dim_value or 1 for d in value.type.tensor_type.shape.dim]
        elem = value.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        if np.issubdtype(dtype, np.floating):
            arrays[value.name] = rng.standard_normal(shape).astype(dtype)
        else:
            arrays[value.name] = np.zeros(shape, dtype=dtype)
    return arrays
