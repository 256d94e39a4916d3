"""Loading ONNX models safely, fixing symbolic input shapes and inferring tensor shapes and types."""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from numbers import Integral
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from predictor.errors import InvalidModelError
from predictor.model.shapes import TensorInfo, infer_model_shapes

__all__ = [
    "MAX_INPUT_DIM",
    "TensorInfo",
    "external_tensors",
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


def load_model(source: str | Path | bytes) -> onnx.ModelProto:
    """Parse an ONNX model from a path or bytes, raising InvalidModelError for anything unloadable.

    External data (weights in files beside the model, as the dynamo exporter writes them) is read only for a
    path, only from regular files in the model's own folder, and only at the offsets the model names: a
    location that is absolute, climbs out of that folder, or is a link is refused, and so is any external
    reference in bytes (an upload is one self-contained file). Nothing outside what the caller handed over
    is read, and no error says whether some other file exists.
    """
    if isinstance(source, bytes):
        data = source
        label = "uploaded model"
        folder = None
    else:
        path = Path(source)
        label = str(path)
        folder = path.parent
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
    external = external_tensors(model)
    if external:
        if folder is None:
            raise InvalidModelError(
                f"{label}: the model keeps {len(external)} tensor(s) in external data files "
                f"(first: {_external_location(external[0])!r}); upload a self-contained model "
                "(onnx.save_model(model, path, save_as_external_data=False))")
        _read_external_data(external, folder, label)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise InvalidModelError(f"{label}: invalid ONNX model: {first_line}") from exc
    except Exception as exc:  # the checker raises bare C++ errors for some corruptions
        raise InvalidModelError(f"{label}: invalid ONNX model: {exc}") from exc
    return model


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers, sparse initializers, attribute tensors, and its subgraphs'."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            for sparse in attribute.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of a model whose data lives in external files (anywhere in the model, subgraphs included)."""
    return [t for t in _all_tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]


def _external_location(tensor: onnx.TensorProto) -> str:
    return next((entry.value for entry in tensor.external_data if entry.key == "location"), "")


def _read_external_data(tensors: list[onnx.TensorProto], folder: Path, label: str) -> None:
    """Load each tensor's external bytes into it, from regular files directly in `folder` only."""
    root = folder.resolve()
    handles: dict[str, bytes] = {}
    for tensor in tensors:
        fields = {entry.key: entry.value for entry in tensor.external_data}
        location = fields.get("location", "")
        where = PurePosixPath(location.replace("\\", "/"))
        if not location or where.is_absolute() or len(where.parts) != 1 or where.name in (".", "..") \
                or ":" in location:
            raise InvalidModelError(
                f"{label}: tensor {tensor.name!r} names external data {location!r}; only a file beside the model "
                "(a plain file name) is read")
        candidate = folder / where.name
        if candidate.is_symlink() or not candidate.is_file() or candidate.resolve().parent != root:
            raise InvalidModelError(
                f"{label}: tensor {tensor.name!r} needs its external data file {where.name!r} beside the model "
                "(a regular file, not a link)")
        if where.name not in handles:
            try:
                handles[where.name] = candidate.read_bytes()
            except OSError as exc:
                raise InvalidModelError(f"{label}: cannot read external data {where.name!r} ({exc.strerror})") \
                    from exc
        blob = handles[where.name]
        try:
            offset = int(fields.get("offset", 0))
            length = int(fields["length"]) if "length" in fields else len(blob) - offset
        except ValueError as exc:
            raise InvalidModelError(f"{label}: tensor {tensor.name!r} has a malformed external data offset") from exc
        if offset < 0 or length < 0 or offset + length > len(blob):
            raise InvalidModelError(
                f"{label}: tensor {tensor.name!r} reads bytes {offset}..{offset + length} of {where.name!r}, "
                f"which holds {len(blob)}")
        tensor.raw_data = blob[offset:offset + length]
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


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
    """Static shapes and element types of every tensor of a model with fixed input shapes (predictor.model.shapes)."""
    try:
        return infer_model_shapes(model)
    except ValueError as exc:
        raise InvalidModelError(str(exc)) from exc


def initializer_arrays(model: onnx.ModelProto) -> Mapping[str, np.ndarray]:
    """Initializers of a model as numpy arrays (plus the values of Constant nodes), converted when first read.

    A tensor whose data lives in an external file that was not loaded (an optimized graph saved without its
    weights) reads as zeros of its shape and type, holding no memory: its shape is all a key needs of it.
    """
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    return _LazyArrays(tensors)


class _LazyArrays(Mapping[str, np.ndarray]):
    """Tensors by name, each converted to numpy on first access (a model's weights are mostly never read)."""

    def __init__(self, tensors: dict[str, onnx.TensorProto]) -> None:
        self._tensors = tensors
        self._arrays: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None:
            tensor = self._tensors[name]
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
                dims = tuple(int(d) for d in tensor.dims)
                array = np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=dims, strides=(0,) * len(dims),
                                                        writeable=False)
            else:
                array = numpy_helper.to_array(tensor)
            self._arrays[name] = array
        return array

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)
