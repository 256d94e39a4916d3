"""Small ONNX models built with onnx.helper for the tests (no downloads, fixed seeds)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

IR_VERSION = 8
OPSET = 17


class GraphBuilder:
    """Accumulates nodes and random initializers; `model()` wraps them as an ONNX model."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], scale: float = 0.1, positive: bool = False) -> str:
        values = self.rng.standard_normal(shape).astype(np.float32) * scale
        if positive:
            values = np.abs(values) + 1.0
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, outputs: list[str] | None = None, **attrs: object) -> str:
        outs = outputs or [f"{name}_out"]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0]

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1,
             bias: bool = True) -> str:
        w = self.weight(f"{name}.weight", (cout, cin // group, k, k))
        inputs = [x, w] + ([self.weight(f"{name}.bias", (cout,))] if bias else [])
        pad = k // 2
        return self.node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[pad, pad, pad, pad], group=group)

    def batchnorm(self, x: str, name: str, channels: int) -> str:
        return self.node("BatchNormalization", [
            x, self.weight(f"{name}.scale", (channels,), positive=True), self.weight(f"{name}.bias", (channels,)),
            self.weight(f"{name}.mean", (channels,)), self.weight(f"{name}.var", (channels,), positive=True),
        ], name)

    def model(self, inputs: dict[str, list[int | str]], output: str, out_shape: list[int | str] | None = None,
              elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "test",
            [helper.make_tensor_value_info(name, elem_type, shape) for name, shape in inputs.items()],
            [helper.make_tensor_value_info(output, elem_type, out_shape)],
            self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        model.ir_version = IR_VERSION
        if out_shape is None:
            # Let onnx infer the output shape instead of spelling it out in every factory.
            inferred = onnx.shape_inference.infer_shapes(model)
            known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
            if output in known and known[output].type.tensor_type.HasField("shape"):
                model.graph.output[0].CopyFrom(known[output])
        onnx.checker.check_model(model)
        return model


def conv_bn_relu_model(channels: int = 32, size: int = 28, cin: int = 16) -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.conv("input", "conv1", cin, channels, bias=False)
    y = g.batchnorm(y, "bn1", channels)
    y = g.node("Relu", [y], "relu1")
    return g.model({"input": [1, cin, size, size]}, y)


def depthwise_model(channels: int = 32, size: int = 28) -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.conv("input", "dw", channels, channels, k=3, group=channels)
    y = g.node("Clip", [y, g.const("lo", np.array(0, np.float32)), g.const("hi", np.array(6, np.float32))], "relu6")
    return g.model({"input": [1, channels, size, size]}, y)


def residual_model(channels: int = 32, size: int = 28) -> onnx.ModelProto:
    g = GraphBuilder()
    a = g.conv("input", "conv_a", channels, channels)
    a = g.node("Relu", [a], "relu_a")
    b = g.conv(a, "conv_b", channels, channels)
    s = g.node("Add", [b, "input"], "add")
    y = g.node("Relu", [s], "relu_out")
    return g.model({"input": [1, channels, size, size]}, y)


def gemm_model(batch: int = 1, k: int = 256, n: int = 128) -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.node("Gemm", ["input", g.weight("fc.weight", (n, k)), g.weight("fc.bias", (n,))], "fc", transB=1)
    return g.model({"input": [batch, k]}, y)


def _gelu(g: GraphBuilder, x: str, prefix: str) -> str:
    d = g.node("Div", [x, g.const(f"{prefix}.sqrt2", np.array(np.sqrt(2.0), np.float32))], f"{prefix}.div")
    e = g.node("Erf", [d], f"{prefix}.erf")
    a = g.node("Add", [e, g.const(f"{prefix}.one", np.array(1.0, np.float32))], f"{prefix}.add")
    m = g.node("Mul", [x, a], f"{prefix}.mul")
    return g.node("Mul", [m, g.const(f"{prefix}.half", np.array(0.5, np.float32))], f"{prefix}.mul_half")


def matmul_add_gelu_model(tokens: int = 16, dim: int = 64, hidden: int = 256) -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.node("MatMul", ["input", g.weight("fc1.weight", (dim, hidden))], "fc1")
    y = g.node("Add", [y, g.weight("fc1.bias", (hidden,))], "fc1.bias_add")
    y = _gelu(g, y, "gelu")
    return g.model({"input": [1, tokens, dim]}, y)


def layernorm_model(tokens: int = 16, dim: int = 64) -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.node("LayerNormalization", ["input", g.weight("ln.weight", (dim,), positive=True),
                                      g.weight("ln.bias", (dim,))], "ln", axis=-1, epsilon=1e-5)
    return g.model({"input": [1, tokens, dim]}, y)


def attention_model(tokens: int = 16, dim: int = 64, heads: int = 4) -> onnx.ModelProto:
    """A ViT-style self-attention block: LayerNorm, QKV projections, scaled softmax, projection, residual."""
    g = GraphBuilder()
    head_dim = dim // heads
    x = g.node("LayerNormalization", ["input", g.weight("ln.weight", (dim,), positive=True),
                                      g.weight("ln.bias", (dim,))], "ln", axis=-1, epsilon=1e-5)
    shape = g.const("heads_shape", np.array([1, tokens, heads, head_dim], np.int64))
    projected = {}
    for name in ("q", "k", "v"):
        p = g.node("MatMul", [x, g.weight(f"{name}.weight", (dim, dim))], f"{name}_proj")
        p = g.node("Add", [p, g.weight(f"{name}.bias", (dim,))], f"{name}_bias")
        p = g.node("Reshape", [p, shape], f"{name}_reshape")
        perm = [0, 2, 3, 1] if name == "k" else [0, 2, 1, 3]
        projected[name] = g.node("Transpose", [p], f"{name}_transpose", perm=perm)
    scores = g.node("MatMul", [projected["q"], projected["k"]], "qk")
    scores = g.node("Mul", [scores, g.const("scale", np.array(head_dim ** -0.5, np.float32))], "qk_scale")
    probs = g.node("Softmax", [scores], "softmax", axis=-1)
    ctx = g.node("MatMul", [probs, projected["v"]], "pv")
    ctx = g.node("Transpose", [ctx], "ctx_transpose", perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, g.const("tokens_shape", np.array([1, tokens, dim], np.int64))], "ctx_reshape")
    out = g.node("MatMul", [ctx, g.weight("proj.weight", (dim, dim))], "proj")
    out = g.node("Add", [out, g.weight("proj.bias", (dim,))], "proj_bias")
    y = g.node("Add", [out, "input"], "residual")
    return g.model({"input": [1, tokens, dim]}, y)


def qdq_conv_model(cin: int = 16, cout: int = 32, size: int = 28) -> onnx.ModelProto:
    """A Conv wrapped in QuantizeLinear/DequantizeLinear as onnxruntime's static quantizer writes it."""
    g = GraphBuilder()
    rng = np.random.default_rng(1)
    weight = rng.integers(-127, 127, size=(cout, cin, 3, 3), dtype=np.int8)
    g.const("w_q", weight)
    g.const("w_scale", (rng.random(cout).astype(np.float32) + 0.5) * 0.01)
    g.const("w_zero", np.zeros(cout, np.int8))
    g.const("x_scale", np.array(0.02, np.float32))
    g.const("x_zero", np.array(128, np.uint8))
    g.const("y_scale", np.array(0.05, np.float32))
    g.const("y_zero", np.array(128, np.uint8))
    xq = g.node("QuantizeLinear", ["input", "x_scale", "x_zero"], "input_quantize")
    xd = g.node("DequantizeLinear", [xq, "x_scale", "x_zero"], "input_dequantize")
    wd = g.node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], "conv.weight_dequantize", axis=0)
    y = g.node("Conv", [xd, wd], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    yq = g.node("QuantizeLinear", [y, "y_scale", "y_zero"], "conv_quantize")
    yd = g.node("DequantizeLinear", [yq, "y_scale", "y_zero"], "conv_dequantize")
    return g.model({"input": [1, cin, size, size]}, yd)


def symbolic_batch_model() -> onnx.ModelProto:
    g = GraphBuilder()
    y = g.node("Gemm", ["input", g.weight("fc.weight", (8, 16)), g.weight("fc.bias", (8,))], "fc", transB=1)
    return g.model({"input": ["batch", 16]}, y, out_shape=["batch", 8])


def kernel_measurement_rows(count: int, seed: int = 0) -> list[dict[str, object]]:
    """`count` distinct kernel keys as the profiler stores them (fused convs, Gemms, elementwise ops),
    each with a median in ms: rows of a synthetic device table of any size (no models, no runtime)."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for index in range(count):
        kind = index % 4
        channels = 8 + (index // 4) % 2048
        size = 7 * (1 + (index // 8192) % 32)
        if kind == 0:
            key: dict[str, object] = {
                "op_type": "FusedConv", "inputs": [[1, channels, size, size]], "outputs": [[1, channels, size, size]],
                "weight": [channels, channels, 3, 3], "activation": "Relu",
                "attrs": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "group": 1},
            }
        elif kind == 1:
            key = {"op_type": "Gemm", "inputs": [[1, channels * 4 + size]], "outputs": [[1, channels]],
                   "weight": [channels, channels * 4 + size], "attrs": {"transB": 1}}
        elif kind == 2:
            key = {"op_type": "Add", "inputs": [[1, channels, size, size], [1, channels, size, size]],
                   "outputs": [[1, channels, size, size]]}
        else:
            key = {"op_type": "QLinearConv", "inputs": [[1, channels, size, size]],
                   "outputs": [[1, channels, size, size]], "weight": [channels, 1, 3, 3], "dtype": "uint8",
                   "bits": 8, "attrs": {"group": channels, "kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                   "sparsity": 0.5, "sparsity_pattern": "unstructured"}
        rows.append({"key": key, "median_ms": float(rng.uniform(0.01, 2.0))})
    return rows
