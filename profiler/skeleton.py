"""Model skeletons: an architecture as JSON data (graph, shapes, weight statistics), without its weights.

The op-space priors in data/priors are skeletons of public architectures; the profiler materializes
them with random weights of the same shape and scale (latency does not depend on the values, only
on shapes, types and zeros).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["load_skeleton", "materialize_skeleton", "model_to_skeleton"]

# Initializers this small (shape vectors, scalars, axes) keep their exact values.
_EXACT_VALUES_MAX = 64
# Float initializers with at most this many distinct values (masks, constants) keep them, and their shares.
_FEW_VALUES = 8


def model_to_skeleton(model: onnx.ModelProto, name: str) -> dict[str, Any]:
    """Describe a model as JSON data: nodes, graph inputs/outputs, initializer shapes and statistics."""
    initializers: dict[str, Any] = {}
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        entry: dict[str, Any] = {"shape": list(array.shape), "dtype": str(array.dtype)}
        if array.size <= _EXACT_VALUES_MAX or not np.issubdtype(array.dtype, np.floating):
            entry["values"] = array.reshape(-1).tolist()
        else:
            distinct, counts = np.unique(array, return_counts=True)
            if distinct.size <= _FEW_VALUES:
                # A mask or a constant (0 and the float minimum, say): its values as they are, in their shares.
                entry["choices"] = [float(v) for v in distinct]
                entry["shares"] = [float(c) / array.size for c in counts]
            else:
                entry["mean"] = float(array.astype(np.float64).mean())
                entry["std"] = float(array.astype(np.float64).std())
                entry["positive"] = bool(array.min() > 0)
        initializers[init.name] = entry

    def value_info(values: Any) -> list[dict[str, Any]]:
        return [{"name": v.name, "elem_type": v.type.tensor_type.elem_type,
                 "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param
                           for d in v.type.tensor_type.shape.dim]} for v in values]

    return {
        "name": name,
        "opset": [{"domain": o.domain, "version": o.version} for o in model.opset_import],
        "ir_version": model.ir_version,
        "inputs": [v for v in value_info(model.graph.input) if v["name"] not in initializers],
        "outputs": value_info(model.graph.output),
        "nodes": [
            {"op": n.op_type, "domain": n.domain, "name": n.name, "inputs": list(n.input),
             "outputs": list(n.output),
             "attrs": {a.name: _attr_json(helper.get_attribute_value(a)) for a in n.attribute}}
            for n in model.graph.node
        ],
        "initializers": initializers,
    }


def _attr_json(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"s": value.decode()}
    if isinstance(value, onnx.TensorProto):
        array = numpy_helper.to_array(value)
        return {"tensor": array.reshape(-1).tolist(), "shape": list(array.shape), "dtype": str(array.dtype)}
    if isinstance(value, list):
        return [_attr_json(v) for v in value]
    return value


def _attr_value(value: Any) -> Any:
    if isinstance(value, dict) and "s" in value:
        return value["s"]
    if isinstance(value, dict) and "tensor" in value:
        return numpy_helper.from_array(np.array(value["tensor"], dtype=value["dtype"]).reshape(value["shape"]))
    if isinstance(value, list):
        return [_attr_value(v) for v in value]
    return value


def load_skeleton(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def materialize_skeleton(skeleton: dict[str, Any], seed: int = 0,
                         input_shapes: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    """Build a runnable model from a skeleton, with random weights of the recorded shape and scale."""
    rng = np.random.default_rng(seed)
    initializers = []
    for name, entry in skeleton["initializers"].items():
        shape = entry["shape"]
        if "values" in entry:
            array = np.array(entry["values"], dtype=entry["dtype"]).reshape(shape)
        elif "choices" in entry:
            array = rng.choice(np.array(entry["choices"], dtype=entry["dtype"]), size=shape, p=entry["shares"])
        else:
            array = rng.standard_normal(shape, dtype=np.float32)
            array *= entry["std"]
            array += entry["mean"]
            array = array.astype(entry["dtype"], copy=False)
            if entry.get("positive"):
                array = np.abs(array) + 1e-3
        initializers.append(numpy_helper.from_array(array, name))
    nodes = [helper.make_node(n["op"], n["inputs"], n["outputs"], name=n["name"], domain=n.get("domain") or None,
                              **{k: _attr_value(v) for k, v in n["attrs"].items()}) for n in skeleton["nodes"]]
    overrides = input_shapes or {}
    inputs = [helper.make_tensor_value_info(v["name"], v["elem_type"], overrides.get(v["name"], v["shape"]))
              for v in skeleton["inputs"]]
    outputs = [helper.make_tensor_value_info(v["name"], v["elem_type"], None if overrides else v["shape"])
               for v in skeleton["outputs"]]
    graph = helper.make_graph(nodes, skeleton["name"], inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(o["domain"], o["version"])
                                                    for o in skeleton["opset"]])
    model.ir_version = skeleton["ir_version"]
    if overrides:
        inferred = onnx.shape_inference.infer_shapes(model)
        known = {v.name: v for v in inferred.graph.output}
        for output in model.graph.output:
            if output.name in known:
                output.CopyFrom(known[output.name])
    return model
