"""What the store keeps of a measured kernel beside its key: the numbers loading a predictor and the dashboard need.

They are computed once, when a key is first stored for a device (predictor.store.aggregates), so that neither
loading a table of a million kernels nor drawing its charts parses a single key:

- bytes moved and MACs (predictor.kernels.features): the bandwidth fallback's fit and the context model;
- sparsity and its pattern, and a digest of the kernel's *shape* (op family, first input and output, weight,
  stride, group, dilation, transposes): the dashboard pairs an int8 or sparse kernel with the fp32 or dense kernel
  of the same shape by it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import KernelKey

__all__ = ["KernelSummary", "op_family", "shape_hash_of", "summarize_kernel_keys", "summarize_keys"]

logger = logging.getLogger(__name__)

_BYTES_COLUMN = FEATURE_NAMES.index("bytes_moved")
_MACS_COLUMN = FEATURE_NAMES.index("macs")
# Runtime variants of one operation: NchwcConv, FusedConv, QLinearConv, ConvInteger are all "Conv".
_FAMILY_PREFIX = re.compile(r"^(?:Nchwc|QLinear|Fused|Q(?=[A-Z]))")
_FAMILY_SUFFIX = re.compile(r"(?:Integer|NBits)$")
# Attributes that change the work of a kernel (the kernel size is in the weight shape), with their ONNX defaults
# so that a runtime variant that spells a default out still matches; fused activations and layout flags do not.
_SHAPE_ATTR_DEFAULTS: dict[str, Any] = {"group": 1, "strides": 1, "dilations": 1, "transA": 0, "transB": 0}
_SHAPE_HASH_CHARS = 32


@dataclass(frozen=True)
class KernelSummary:
    """A measured key's numbers, as the store keeps them beside it."""

    bytes_moved: float
    macs: float
    sparsity: float
    sparsity_pattern: str
    shape_hash: str


def op_family(op_type: str) -> str:
    """The operation behind a runtime op type: "QLinearConv", "NchwcConv" and "ConvInteger" are "Conv"."""
    family = op_type
    while True:
        stripped = _FAMILY_SUFFIX.sub("", _FAMILY_PREFIX.sub("", family))
        if stripped == family or not stripped:
            return family
        family = stripped


def _shape_attr(attrs: Mapping[str, Any], name: str) -> Any:
    value = attrs.get(name)
    if value is None:
        return _SHAPE_ATTR_DEFAULTS[name]
    if isinstance(value, tuple) and value and all(item == value[0] for item in value):
        return value[0]
    return value


def _first_shape(shapes: Sequence[Any]) -> list[int] | None:
    return list(shapes[0]) if shapes and shapes[0] is not None else None


def shape_hash_of(key: KernelKey) -> str:
    """A digest of the kernel's shape: equal for the fp32, int8 and sparse kernels of one layer's shape."""
    attrs = dict(key.attrs)
    shape = [op_family(key.op_type), _first_shape(key.inputs), _first_shape(key.outputs),
             None if key.weight is None else list(key.weight),
             [_shape_attr(attrs, name) for name in _SHAPE_ATTR_DEFAULTS]]
    text = json.dumps(shape, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:_SHAPE_HASH_CHARS]


def _parse(key: Mapping[str, Any]) -> KernelKey | None:
    try:
        return KernelKey.from_dict(key)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        logger.debug("key not readable as a kernel key (%s): stored without a summary", exc)
        return None


def _bytes_and_macs(keys: Sequence[KernelKey]) -> list[tuple[float, float] | None]:
    """(bytes moved, MACs) of each key; None for a key the feature pipeline cannot describe (or not finitely)."""
    try:
        with np.errstate(all="ignore"):
            matrix = features_matrix(keys, cached=False)
    except Exception:  # one bad key fails the batch: find it, keep the others
        if len(keys) == 1:
            return [None]
        return [work for key in keys for work in _bytes_and_macs([key])]
    work = matrix[:, [_BYTES_COLUMN, _MACS_COLUMN]]
    finite = np.isfinite(work).all(axis=1).tolist()
    return [(row[0], row[1]) if ok else None for row, ok in zip(work.tolist(), finite, strict=True)]


def summarize_keys(keys: Sequence[Mapping[str, Any]]) -> list[KernelSummary | None]:
    """The summary of each stored key (a KernelKey's dict); None where the key is not a usable kernel key.

    The REST API refuses such keys before they reach the store; the store keeps them (their rows are
    measurements too) but no predictor or chart can use them.
    """
    return summarize_kernel_keys([_parse(key) for key in keys])


def summarize_kernel_keys(parsed: Sequence[KernelKey | None]) -> list[KernelSummary | None]:
    """`summarize_keys` of keys parsed already (None: not readable)."""
    readable = [key for key in parsed if key is not None]
    numbers = iter(_bytes_and_macs(readable) if readable else [])
    summaries: list[KernelSummary | None] = []
    for key in parsed:
        if key is None:
            summaries.append(None)
            continue
        work = next(numbers)
        if work is None:
            summaries.append(None)
            continue
        summaries.append(KernelSummary(bytes_moved=work[0], macs=work[1], sparsity=float(key.sparsity),
                                       sparsity_pattern=key.sparsity_pattern, shape_hash=shape_hash_of(key)))
    return summaries
