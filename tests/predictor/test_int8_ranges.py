"""int8 without calibration: synthesized activation ranges give the kernels calibration gives.

The reference is onnxruntime's quantize_static calibrating on random inputs (what quantize_int8 did
before it stopped executing models), called here with the same arguments.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from predictor.compression.apply import fold_for_quantization, quantize_int8, synthesize_activation_ranges
from predictor.kernels.keys import KernelKey, extract_kernels, name_unnamed_nodes
from predictor.runtime.optimizer import local_runtime
from tests import factories, zoo

RUNTIME = local_runtime(1)


def calibrated_int8(model: onnx.ModelProto, nodes: list[str] | None = None) -> onnx.ModelProto:
    """The former quantize_int8: min-max calibration by running the model twice on random normal inputs."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    folded = fold_for_quantization(model)
    rng = np.random.default_rng(0)
    initializers = {init.name for init in folded.graph.initializer}
    inputs = {value.name: rng.standard_normal([d.dim_value for d in value.type.tensor_type.shape.dim])
              .astype(np.float32) for value in folded.graph.input if value.name not in initializers}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([inputs] * 2)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(folded, source)
        quantize_static(str(source), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=nodes,
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False})
        quantized = onnx.load(str(target))
    quantized.ir_version = folded.ir_version
    return name_unnamed_nodes(quantized)


def kernel_multiset(model: onnx.ModelProto) -> Counter[tuple[KernelKey, tuple[str, ...]]]:
    # A multiset: the quantizer's order of independent nodes (weight DequantizeLinears) follows a set's
    # iteration order, which varies between processes; what runs does not.
    return Counter((kernel.key, kernel.nodes) for kernel in extract_kernels(model, RUNTIME))


def shared_activation_model() -> onnx.ModelProto:
    """Relu, Clip(0, 6) and Sigmoid whose inputs have a second consumer: the quantizer cannot remove them, and
    onnxruntime folds a Relu/Clip into its QuantizeLinear only when that has zero point 0 (range [0, max])."""
    g = factories.GraphBuilder()
    y = g.conv("input", "conv", 8, 8)
    y = g.node("Add", [g.node("Relu", [y], "relu"), y], "add")
    y = g.conv(y, "conv2", 8, 8)
    six = g.node("Clip", [y, g.const("zero", np.array(0.0, np.float32)), g.const("six", np.array(6.0, np.float32))],
                 "relu6")
    y = g.conv(g.node("Add", [six, y], "add2"), "conv3", 8, 8)
    return g.model({"input": [1, 8, 8, 8]}, g.node("Mul", [g.node("Sigmoid", [y], "gate"), y], "silu"))


FACTORY_MODELS = ["conv_bn_relu_model", "depthwise_model", "residual_model", "gemm_model", "matmul_add_gelu_model",
                  "layernorm_model", "attention_model"]
# Relu6 as Clip (mobilenet_v2), HardSigmoid/HardSwish and squeeze-excite Mul (v3), Concat/Split/Transpose
# (shufflenet), Concat of Relus (squeezenet), Sigmoid/SiLU (efficientnet), Softmax/LayerNorm/Gelu (vit).
ZOO_MODELS = ["mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x1_0", "squeezenet1_1", "efficientnet_b0",
              "vit_tiny"]


@pytest.mark.parametrize("name", FACTORY_MODELS)
def test_synthesized_ranges_give_the_calibrated_kernels_on_test_models(name: str) -> None:
    model = getattr(factories, name)()
    synthesized = kernel_multiset(quantize_int8(model))
    assert any(key.bits == 8 for key, _ in synthesized), "the model was quantized at all"
    assert synthesized == kernel_multiset(calibrated_int8(model))


def test_synthesized_ranges_keep_the_signs_that_decide_fusions(monkeypatch: pytest.MonkeyPatch) -> None:
    model = shared_activation_model()
    calibrated = kernel_multiset(calibrated_int8(model))
    assert kernel_multiset(quantize_int8(model)) == calibrated
    fused = [nodes for key, nodes in calibrated if key.op_type == "QuantizeLinear" and len(nodes) > 1]
    assert sorted(fused) == [("relu", "relu_out_QuantizeLinear"), ("relu6", "relu6_out_QuantizeLinear")]
    # Symmetric ranges everywhere would keep Relu and Clip as kernels of their own: the comparison can fail.
    monkeypatch.setattr("predictor.compression.apply._propagate_ranges", lambda model: {})
    assert kernel_multiset(quantize_int8(model)) != calibrated


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_synthesized_ranges_give_the_calibrated_kernels_on_zoo_architectures(name: str) -> None:
    model = zoo.build_model(name, image_size=32, num_classes=10)
    assert kernel_multiset(quantize_int8(model)) == kernel_multiset(calibrated_int8(model))


def test_synthesized_ranges_give_the_calibrated_kernels_for_some_layers() -> None:
    model = zoo.build_model("mobilenet_v2", image_size=32, num_classes=10)
    convs = [node.name for node in fold_for_quantization(model).graph.node if node.op_type == "Conv"]
    some = convs[::3]
    assert kernel_multiset(quantize_int8(model, some)) == kernel_multiset(calibrated_int8(model, some))


def test_ranges_follow_signs_clip_bounds_and_cover_the_calibrated_tensors() -> None:
    g = factories.GraphBuilder()
    conv = g.conv("input", "conv", 8, 8)
    relu = g.node("Relu", [conv], "relu")
    pooled = g.node("MaxPool", [relu], "pool", kernel_shape=[2, 2], strides=[2, 2])
    six = g.node("Clip", [g.conv(pooled, "conv2", 8, 8), g.const("zero", np.array(0.0, np.float32)),
                          g.const("six", np.array(6.0, np.float32))], "relu6")
    gate = g.node("Sigmoid", [g.conv(six, "conv3", 8, 8)], "gate")
    model = g.model({"input": [1, 8, 8, 8]}, g.node("Mul", [gate, six], "scaled"))
    inferred = onnx.shape_inference.infer_shapes(model)
    ranges = synthesize_activation_ranges(inferred, ["Conv", "Relu", "MaxPool", "Clip", "Sigmoid", "Mul"])

    def bounds(name: str) -> tuple[float, float]:
        low, high = ranges[name].range_value
        return float(low[0]), float(high[0])

    assert set(ranges.keys()) == {"input", conv, relu, pooled, "conv2_out", six, "conv3_out", gate, "scaled_out"}
    assert bounds("input")[0] < 0 < bounds("input")[1] and bounds(conv)[0] == -bounds(conv)[1]
    assert bounds(relu)[0] == 0 and bounds(pooled) == bounds(relu)
    assert bounds(six) == (0.0, 6.0)
    assert bounds(gate) == (0.0, 1.0)
    assert bounds("scaled_out")[0] == 0, "a product of non-negative tensors is non-negative"


def test_int8_never_creates_an_inference_session_for_calibration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only fold_for_quantization's optimizer session remains; no session is ever run."""
    import onnxruntime as ort

    created: list[object] = []
    real_session = ort.InferenceSession

    class CountingSession(real_session):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            created.append(args[0])
            super().__init__(*args, **kwargs)

        def run(self, *args: object, **kwargs: object) -> object:
            raise AssertionError("the model was executed")

    monkeypatch.setattr(ort, "InferenceSession", CountingSession)
    quantized = quantize_int8(factories.residual_model(channels=8, size=8))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in quantized.graph.node}
    assert len(created) == 1
