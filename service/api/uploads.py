"""Receiving model uploads: a size limit enforced while the body streams in, and atomic file writes."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from predictor.errors import InvalidModelError, LatpredError
from predictor.estimation.prepared import model_id_of
from predictor.model.graph import parse_input_shapes

__all__ = [
    "UploadTooLargeError",
    "UploadedModel",
    "check_model_size",
    "display_name",
    "parse_input_shapes_field",
    "read_model_upload",
    "upload_id",
    "write_atomically",
]

logger = logging.getLogger(__name__)

# Multipart boundaries, part headers and the small form fields around the file.
_FORM_OVERHEAD_BYTES = 64 * 1024
_READ_CHUNK_BYTES = 1024 * 1024
_MAX_NAME_CHARS = 256
# Split "a=1x3x224x224,b=1x10" at commas that start a new NAME=, not inside "1,3,224,224".
_SHAPE_SPEC_SEPARATOR = re.compile(r"[;\s]+|,(?=\s*[^,=\s]+\s*=)")


class UploadTooLargeError(LatpredError):
    """The upload is larger than the configured limit."""

    def __init__(self, limit_mb: float) -> None:
        super().__init__(f"upload exceeds {limit_mb:g} MB")
        self.limit_mb = limit_mb


class BadUploadError(LatpredError, ValueError):
    """The request is not a multipart form with a model file in the field `file`."""


@dataclass(frozen=True)
class UploadedModel:
    data: bytes
    filename: str
    input_shapes: str | None


async def _limited(stream: AsyncIterator[bytes], max_bytes: int, limit_mb: float) -> AsyncGenerator[bytes, None]:
    """Pass the body through, stopping (without reading further) once it is longer than max_bytes."""
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise UploadTooLargeError(limit_mb)
        yield chunk


async def read_model_upload(request: Request, limit_mb: float) -> UploadedModel:
    """Read the multipart form `file` (+ optional `input_shapes`), never holding more than the limit.

    Raises UploadTooLargeError as soon as the body (or the declared Content-Length) passes the limit,
    BadUploadError when the form has no file.
    """
    limit_bytes = int(limit_mb * 1024 * 1024)
    max_body_bytes = limit_bytes + _FORM_OVERHEAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise UploadTooLargeError(limit_mb)
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise BadUploadError("send the model as multipart/form-data with the ONNX file in the field 'file'")
    parser = MultiPartParser(request.headers, _limited(request.stream(), max_body_bytes, limit_mb),
                             max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadUploadError(f"malformed multipart form: {exc.message}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise BadUploadError("the form has no file in the field 'file'")
        chunks: list[bytes] = []
        size = 0
        while chunk := await upload.read(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit_bytes:
                raise UploadTooLargeError(limit_mb)
            chunks.append(chunk)
        shapes = form.get("input_shapes")
        if shapes is not None and not isinstance(shapes, str):
            raise BadUploadError("the form field 'input_shapes' must be text, e.g. input=1x3x224x224")
        return UploadedModel(data=b"".join(chunks), filename=upload.filename or "", input_shapes=shapes or None)
    finally:
        await form.close()


def _node_count(model: onnx.ModelProto, stop_above: int) -> int:
    """Nodes of the graph and of every subgraph (If, Loop, Scan bodies), counted up to just past `stop_above`."""
    count = 0
    graphs = [model.graph]
    while graphs and count <= stop_above:
        graph = graphs.pop()
        count += len(graph.node)
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attribute.g)
                elif attribute.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attribute.graphs)
    return count


def check_model_size(model: onnx.ModelProto, max_nodes: int) -> None:
    """InvalidModelError naming the limit if the model has more than `max_nodes` nodes, subgraphs included.

    Everything the service does with a model (kernel extraction, compression, estimation) costs time and
    memory per node, some of it more than linearly: the count is checked before any of it runs.
    """
    count = _node_count(model, max_nodes)
    if count > max_nodes:
        raise InvalidModelError(f"the model has more than {max_nodes:,} nodes (subgraphs included), the limit "
                                "of this server (LATPRED_MAX_MODEL_NODES)")


def parse_input_shapes_field(text: str | None) -> dict[str, list[int]]:
    """Parse "input=1x3x224x224,other=1x10" into {name: dims}; raises InvalidModelError on bad syntax."""
    if not text or not text.strip():
        return {}
    specs = [spec for spec in _SHAPE_SPEC_SEPARATOR.split(text.strip()) if spec]
    return parse_input_shapes(specs)


def upload_id(data: bytes, shapes: dict[str, list[int]]) -> str:
    """A model's id: sha256 of its bytes; with input shapes fixed at upload, of the bytes and the shapes.

    The same bytes uploaded with other input shapes are another model (other kernels), not the first one.
    """
    if not shapes:
        return model_id_of(data)
    canonical = json.dumps(sorted((name, list(dims)) for name, dims in shapes.items()), separators=(",", ":"))
    return hashlib.sha256(data + b"\n" + canonical.encode()).hexdigest()


def display_name(filename: str) -> str:
    """The client's file name reduced to a label: last path component only, never used as a path."""
    name = PureWindowsPath(PurePosixPath(filename).name).name
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if not name or name in (".", ".."):
        name = "model.onnx"
    return name[:_MAX_NAME_CHARS]


def write_atomically(path: Path, data: bytes) -> None:
    """Write the bytes to a temporary file beside `path`, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".upload-", suffix=".part")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
