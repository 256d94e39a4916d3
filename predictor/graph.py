"""Loading ONNX models safely, fixing symbolic input shapes and inferring tensor shapes and types."""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from predictor.errors import InvalidModelError

__all__ = [
    "MAX_INPUT_DIM",
    "TensorInfo",
    "infer_tensor_infos",
    "load_model",
    "model_inputs",
    "parse_input_shapes",
    "set_input_shapes",
]

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]

_SHAPE_ARG = re.compile(r"^([^=]+)=(\d+(?:[x,]\d+)*)$")
# Largest dimension a caller may set: far beyond any real tensor, and products of a few stay inside int64
# (protobuf refuses dims past int64; onnxruntime's size arithmetic overflows well before that).
MAX_INPUT_DIM = 2**31 - 1


@dataclass(frozen=True)
class TensorInfo:
    """Static shape and element type of one tensor (shape None where unknown)."""

    shape: Shape | None
    elem_type: int


def load_model(source: str | Path | bytes) -> onnx.ModelProto:
    """Parse an ONNX model from a path or bytes, raising InvalidModelError for anything unloadable.

    Weights stored as external data are not followed: a model must be self-contained.
    """
    if isinstance(source, bytes):
        data = source
        label = "uploaded model"
    else:
        path = Path(source)
        label = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InvalidModelError(f"{label}: no such file") from exc
        except IsADirectoryError as exc:
            raise InvalidModelError(f"{label}: is a directory, not an ONNX file") from exc
        except OSError as exc:
            raise InvalidModelError(f"{label}: cannot read ({exc.strerror})") from exc
    if not data:
        raise InvalidModelError(f"{label}: empty file, not an ONNX model")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidModelError(f"{label}: not an ONNX model or a truncated/corrupted protobuf") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0:
        raise InvalidModelError(f"{label}: not an ONNX model (no graph nodes found)")
    if not model.opset_import:
        raise InvalidModelError(f"{label}: the model declares no opset")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise InvalidModelError(f"{label}: invalid ONNX model: {first_line}") from exc
    except Exception as exc:  # the checker raises bare C++ errors for some corruptions
        raise InvalidModelError(f"{label}: invalid ONNX model: {exc}") from exc
    return model


def model_inputs(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Graph inputs that are not initializers, with their dims (int, symbolic name or None)."""
    initializer_names = {init.name for init in model.graph.initializer}
    inputs: dict[str, list[int | str | None]] = {}
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        dims: list[int | str | None] = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        inputs[value.name] = dims
    return inputs


def parse_input_shapes(specs: list[str] | tuple[str, ...]) -> dict[str, list[int]]:
    """Parse `name=1x3x224x224` arguments into a mapping; raises InvalidModelError on bad syntax."""
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        match = _SHAPE_ARG.match(spec.strip())
        if not match:
            raise InvalidModelError(f"bad --input-shape {spec!r}: expected NAME=DxDxD, e.g. input=1x3x224x224")
        dims = [int(d) for d in re.split(r"[x,]", match.group(2))]
        if any(d <= 0 for d in dims):
            raise InvalidModelError(f"bad --input-shape {spec!r}: dimensions must be positive")
        shapes[match.group(1)] = dims
    return shapes


def set_input_shapes(model: onnx.ModelProto, input_shapes: Mapping[str, list[int]] | None = None) -> onnx.ModelProto:
    """Return a copy of the model whose graph inputs all have fixed shapes.

    Symbolic or missing dimensions must be given in `input_shapes`; otherwise InvalidModelError says
    which input and dimension need `--input-shape`.
    """
    input_shapes = dict(input_shapes or {})
    inputs = model_inputs(model)
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise InvalidModelError(
            f"--input-shape names unknown input(s) {', '.join(unknown)}; model inputs: {', '.join(inputs)}"
        )
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializer_names = {init.name for init in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializer_names:
            continue
        dims = inputs[value.name]
        if value.name in input_shapes:
            wanted = input_shapes[value.name]
            for position, want in enumerate(wanted):
                if isinstance(want, bool) or not isinstance(want, Integral) or not 1 <= want <= MAX_INPUT_DIM:
                    raise InvalidModelError(
                        f"--input-shape {value.name}: dim {position} must be an integer in [1, {MAX_INPUT_DIM}], "
                        f"not {want!r}"
                    )
            if len(wanted) != len(dims):
                raise InvalidModelError(
                    f"--input-shape {value.name} has {len(wanted)} dims, the model's input has {len(dims)}"
                )
            for position, (have, want) in enumerate(zip(dims, wanted, strict=True)):
                if isinstance(have, int) and have != want:
                    raise InvalidModelError(
                        f"--input-shape {value.name}: dim {position} is fixed to {have} in the model, not {want}"
                    )
            shape_proto = value.type.tensor_type.shape
            shape_proto.ClearField("dim")
            for want in wanted:
                shape_proto.dim.add().dim_value = want
            continue
        symbolic = [d for d in dims if not isinstance(d, int)]
        if symbolic or not value.type.tensor_type.HasField("shape"):
            name = symbolic[0] if symbolic and symbolic[0] is not None else "?"
            example = "x".join(str(d) if isinstance(d, int) else "N" for d in dims)
            raise InvalidModelError(
                f"input {value.name!r} has symbolic dimension {name!r}; "
                f"fix it with --input-shape {value.name}={example}"
            )
    return fixed


def infer_tensor_infos(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """Static shapes and element types of every tensor of a model with fixed input shapes."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # inference errors come as several unrelated C++ exception types
        raise InvalidModelError(f"shape inference failed: {exc}") from exc
    infos: dict[str, TensorInfo] = {}
    values = list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)
    for value in values:
        tensor_type = value.type.tensor_type
        shape: Shape | None = None
        if tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
            shape = tuple(dims) if all(d >= 0 for d in dims) else None
        infos[value.name] = TensorInfo(shape=shape, elem_type=int(tensor_type.elem_type))
    for init in inferred.graph.initializer:
        infos[init.name] = TensorInfo(shape=tuple(int(d) for d in init.dims), elem_type=int(init.data_type))
    for node in inferred.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    array = numpy_helper.to_array(attr.t)
                    infos[node.output[0]] = TensorInfo(shape=tuple(array.shape), elem_type=int(attr.t.data_type))
    return infos


def initializer_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers of a model as numpy arrays (plus the values of Constant nodes)."""
    arrays = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    arrays[node.output[0]] = numpy_helper.to_array(attr.t)
    return arrays
