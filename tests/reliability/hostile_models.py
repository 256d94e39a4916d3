"""Valid ONNX models that are hard on a service: control flow (If, Loop), external data, many nodes, slow int8."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, external_data_helper, helper, numpy_helper

from tests.factories import IR_VERSION, OPSET

__all__ = ["conv_chain", "external_data_model", "if_model", "loop_model", "relu_chain"]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] | None = None, check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    if check:
        onnx.checker.check_model(model)
    return model


def _float(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def relu_chain(nodes: int, width: int = 8) -> onnx.ModelProto:
    """`nodes` Relu nodes in a row: tiny bytes (about 28 per node), as many kernels."""
    chain = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"], name=f"relu_{i}") for i in range(nodes)]
    return _model(chain, [_float("t0", [1, width])], [_float(f"t{nodes}", [1, width])])


def conv_chain(layers: int, channels: int = 8, size: int = 8, seed: int = 0) -> onnx.ModelProto:
    """`layers` 3x3 convolutions in a row; int8 quantization of it costs time growing faster than the layers."""
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for i in range(layers):
        weights.append(numpy_helper.from_array(
            rng.standard_normal((channels, channels, 3, 3)).astype(np.float32) * 0.1, f"w{i}"))
        nodes.append(helper.make_node("Conv", [f"t{i}", f"w{i}"], [f"t{i + 1}"], name=f"conv_{i}",
                                      pads=[1, 1, 1, 1]))
    shape = [1, channels, size, size]
    return _model(nodes, [_float("t0", shape)], [_float(f"t{layers}", shape)], weights)


def if_model() -> onnx.ModelProto:
    """A Relu or a Sigmoid chosen by the sign of the input's sum: an If node with two subgraph attributes."""
    def branch(name: str, op: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_y"], name=f"{name}_op")], name, [],
                                 [_float(f"{name}_y", [1, 8])])

    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], name="sum", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["positive"], name="is_positive"),
             helper.make_node("If", ["positive"], ["y"], name="choose", then_branch=branch("then", "Relu"),
                              else_branch=branch("else", "Sigmoid")),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    return _model(nodes, [_float("x", [1, 8])], [_float("out", [1, 8])], [zero])


def loop_model(body_nodes: int = 1, trips: int = 3) -> onnx.ModelProto:
    """A Loop running `trips` times over a body of `body_nodes` Relu nodes (the nodes hide in the subgraph)."""
    chain = [helper.make_node("Relu", [f"b{i}"], [f"b{i + 1}"], name=f"body_relu_{i}") for i in range(body_nodes)]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Identity", ["x_in"], ["b0"], name="body_in"), *chain,
         helper.make_node("Identity", [f"b{body_nodes}"], ["x_out"], name="body_out")],
        "body",
        [helper.make_tensor_value_info("iteration", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _float("x_in", [1, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _float("x_out", [1, 8])])
    nodes = [helper.make_node("Loop", ["trips", "go", "x"], ["y"], name="loop", body=body)]
    initializers = [helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
                    helper.make_tensor("go", TensorProto.BOOL, [], [True])]
    return _model(nodes, [_float("x", [1, 8])], [_float("y", [1, 8])], initializers)


def external_data_model(location: str, length: int = 64) -> bytes:
    """A Gemm whose weight (4x4 float) is kept in an external file at `location`, as the dynamo exporter writes
    weights; the file is not sent. A server that reads it returns its bytes folded into the kernel keys."""
    weight = numpy_helper.from_array(np.zeros((4, 4), np.float32), "w")
    external_data_helper.set_external_data(weight, location=location, offset=0, length=length)
    weight.ClearField("raw_data")
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)
    model = _model([node], [_float("x", [1, 4])], [_float("y", [1, 4])], [weight], check=False)
    return model.SerializeToString()
