"""Numeric features of a kernel key: one fixed-order vector shared by every op type's regressor.

The vector describes work (MACs, bytes moved, their ratio), layout (channels, spatial size, kernel,
stride, group), the alignment of channel counts to SIMD widths, precision and sparsity. Missing
shapes count as 0 so a partial key still yields a vector; unknown op types are treated as
elementwise (work ~ output elements).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from predictor.kernels.keys import KernelKey

__all__ = [
    "ACTIVATION_CODES",
    "FEATURE_NAMES",
    "features_matrix",
    "kernel_features",
]

logger = logging.getLogger(__name__)

# Integer codes for fused activations; anything not listed gets OTHER_ACTIVATION_CODE.
ACTIVATION_CODES: dict[str | None, int] = {
    None: 0,
    "Relu": 1,
    "Clip": 2,
    "Sigmoid": 3,
    "HardSigmoid": 4,
    "LeakyRelu": 5,
}
_OTHER_ACTIVATION_CODE = 6

FEATURE_NAMES: list[str] = [
    "input_elems",
    "output_elems",
    "weight_elems",
    "macs",
    "effective_macs",
    "bytes_moved",
    "arithmetic_intensity",
    "log_input_elems",
    "log_output_elems",
    "log_weight_elems",
    "log_macs",
    "log_bytes_moved",
    "macs_per_output",
    "n_data_inputs",
    "batch",
    "cin",
    "cout",
    "out_spatial",
    "in_spatial",
    "kernel_h",
    "kernel_w",
    "kernel_area",
    "stride",
    "group",
    "is_depthwise",
    "cin_mod8",
    "cin_mod16",
    "cin_mod32",
    "cin_div8",
    "cin_div16",
    "cin_div32",
    "cout_mod8",
    "cout_mod16",
    "cout_mod32",
    "cout_div8",
    "cout_div16",
    "cout_div32",
    "inner_dim",
    "inner_dim_mod8",
    "output_rank",
    "channels_last",
    "matmul_m",
    "matmul_n",
    "matmul_k",
    "activation_code",
    "bits",
    "activation_bytes",
    "sparsity",
    "is_2_4",
    "is_unstructured",
    "signed_activations",
    "per_channel_weights",
]

_N_FEATURES = len(FEATURE_NAMES)
_DTYPE_BYTES = {
    "float64": 8.0, "int64": 8.0, "float32": 4.0, "int32": 4.0, "float16": 2.0, "bfloat16": 2.0, "int16": 2.0,
    "uint8": 1.0, "int8": 1.0, "bool": 1.0, "uint4": 0.5, "int4": 0.5,
}
_MATMUL_MARKERS = ("MatMul", "Gemm")
_FEATURE_CACHE_SIZE = 65536


def _elems(shape: Sequence[int] | None) -> int:
    """Number of elements of a shape; 0 for an unknown shape, 1 for a scalar."""
    if shape is None:
        return 0
    return max(0, math.prod(shape))


def _dim(shape: Sequence[int] | None, index: int, default: int = 0) -> int:
    if shape is None or not -len(shape) <= index < len(shape):
        return default
    return int(shape[index])


def _channel_dim(shape: Sequence[int] | None, channels_last: bool) -> int:
    """Channels of an activation tensor: dim 1 of NCHW (rank >= 4), else the innermost dim."""
    if not shape:
        return 0
    if len(shape) >= 4 and not channels_last:
        return int(shape[1])
    return int(shape[-1])


def _spatial(shape: Sequence[int] | None, channels_last: bool) -> int:
    """Product of the spatial dims of an N-C-spatial (or N-spatial-C) tensor; 0 if rank < 3."""
    if shape is None or len(shape) < 3:
        return 0
    dims = shape[1:-1] if channels_last else shape[2:]
    return max(0, math.prod(dims))


def _first_int(value: Any, default: int) -> int:
    """Largest element of an int-or-tuple attribute (strides), or default."""
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(max(value)) if value else default
    return int(value)


def _matmul_dims(key: KernelKey, attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(batch, M, N, K) of a Gemm/MatMul-like kernel; unknown dims are 0."""
    out = key.outputs[0] if key.outputs else None
    in0 = key.inputs[0] if key.inputs else None
    in1 = key.inputs[1] if len(key.inputs) > 1 else None
    weight = key.weight
    trans_a = bool(attrs.get("transA", 0))
    trans_b = bool(attrs.get("transB", 0))
    # K: the reduction dim, from the weight where there is one (Gemm [N,K] under transB, else [K,N]).
    if weight is not None and len(weight) >= 2:
        if key.op_type.endswith("Gemm"):
            k = weight[1] if trans_b else weight[0]
            n_from_weight = weight[0] if trans_b else weight[1]
        else:
            k = weight[-1] if trans_b else weight[-2]
            n_from_weight = weight[-2] if trans_b else weight[-1]
    else:
        k = _dim(in0, -2 if trans_a else -1)
        n_from_weight = _dim(in1, -2 if trans_b else -1)
    if out is not None and len(out) >= 1:
        n = out[-1]
        m = out[-2] if len(out) >= 2 else 1
        batch = max(0, math.prod(out[:-2])) if len(out) > 2 else 1
    else:
        n = n_from_weight
        m = _dim(in0, -1 if trans_a else -2, 1 if in0 is not None and len(in0) == 1 else 0)
        batch = max(0, math.prod(in0[:-2])) if in0 is not None and len(in0) > 2 else (1 if in0 is not None else 0)
    return int(batch), int(m), int(n), int(k)


@lru_cache(maxsize=1024)
def _is_matmul_like(op_type: str) -> bool:
    return any(marker in op_type for marker in _MATMUL_MARKERS)


def _raw_features(key: KernelKey) -> tuple[float, ...]:
    """Per-key quantities in the order of _RAW_NAMES; everything derivable from them is left to _derive."""
    attrs = dict(key.attrs) if key.attrs else {}
    op = key.op_type
    channels_last = attrs.get("channels_last") == 1
    out = key.outputs[0] if key.outputs else None
    in0 = key.inputs[0] if key.inputs else None
    weight = key.weight

    input_elems = sum([_elems(shape) for shape in key.inputs])
    output_elems = sum([_elems(shape) for shape in key.outputs])
    out0_elems = _elems(out)
    weight_elems = _elems(weight)
    n_data_inputs = len(key.inputs)

    group = int(attrs.get("group", 1) or 1)
    kernel_h = kernel_w = kernel_area = 0
    stride = _first_int(attrs.get("strides"), 1)
    m = n = k = 0
    batch = _dim(out, 0, _dim(in0, 0))
    cin = _channel_dim(in0, channels_last)
    cout = _channel_dim(out, channels_last)
    is_depthwise = 0

    if _is_matmul_like(op):
        batch, m, n, k = _matmul_dims(key, attrs)
        macs = batch * m * n * k
        cin, cout = k, n
    elif "Conv" in op and weight is not None and len(weight) >= 3:
        kernel_dims = weight[2:]
        kernel_h = int(kernel_dims[0])
        kernel_w = int(kernel_dims[1]) if len(kernel_dims) > 1 else 1
        kernel_area = max(0, math.prod(kernel_dims))
        if "ConvTranspose" in op:
            # Weight [Cin, Cout/group, k...]: every input element scatters into Cout/group * k outputs.
            cin, cout = int(weight[0]), int(weight[1]) * group
            macs = _elems(in0) * int(weight[1]) * kernel_area
        else:
            cin, cout = int(weight[1]) * group, int(weight[0])
            macs = out0_elems * int(weight[1]) * kernel_area
        is_depthwise = int(group > 1 and group == cin and int(weight[1]) == 1)
    elif "Pool" in op:
        if "Global" in op:
            kernel_area = _spatial(in0, channels_last)
            macs = _elems(in0)
        else:
            kernel_shape = attrs.get("kernel_shape") or ()
            if not isinstance(kernel_shape, (list, tuple)):
                kernel_shape = (int(kernel_shape),)
            kernel_h = int(kernel_shape[0]) if kernel_shape else 0
            kernel_w = int(kernel_shape[1]) if len(kernel_shape) > 1 else kernel_h
            kernel_area = max(0, math.prod(kernel_shape)) if kernel_shape else 0
            macs = out0_elems * max(kernel_area, 1)
    else:
        macs = max(output_elems, input_elems)

    pattern = key.sparsity_pattern
    return (
        input_elems,
        output_elems,
        out0_elems,
        weight_elems,
        macs,
        key.sparsity,
        n_data_inputs,
        batch,
        cin,
        cout,
        _spatial(out, channels_last),
        _spatial(in0, channels_last),
        kernel_h,
        kernel_w,
        kernel_area,
        stride,
        group,
        is_depthwise,
        _dim(out, -1, _dim(in0, -1)),
        len(out) if out is not None else 0,
        channels_last,
        m,
        n,
        k,
        ACTIVATION_CODES.get(key.activation, _OTHER_ACTIVATION_CODE),
        key.bits,
        _DTYPE_BYTES.get(key.dtype, 4.0),
        pattern == "2:4",
        pattern == "unstructured",
        key.bits == 8 and key.dtype == "int8",
        attrs.get("weight_scale") == "channel",
    )


_RAW_NAMES = [
    "input_elems", "output_elems", "out0_elems", "weight_elems", "macs", "sparsity", "n_data_inputs", "batch", "cin",
    "cout", "out_spatial", "in_spatial", "kernel_h", "kernel_w", "kernel_area", "stride", "group", "is_depthwise",
    "inner_dim", "output_rank", "channels_last", "matmul_m", "matmul_n", "matmul_k", "activation_code", "bits",
    "activation_bytes", "is_2_4", "is_unstructured", "signed_activations", "per_channel_weights",
]
_RAW = {name: index for index, name in enumerate(_RAW_NAMES)}


@lru_cache(maxsize=_FEATURE_CACHE_SIZE)
def _cached_raw(key: KernelKey) -> tuple[float, ...]:
    return _raw_features(key)


def _raw_tuple(key: KernelKey) -> tuple[float, ...]:
    try:
        return _cached_raw(key)
    except TypeError:
        # A hand-built key with list-valued attributes is unhashable: compute without the cache.
        return _raw_features(key)


# Where each raw quantity lands in the feature vector (out0_elems is only used for derived features).
_RAW_TARGETS = np.array([FEATURE_NAMES.index(name) for name in _RAW_NAMES if name in FEATURE_NAMES], dtype=np.intp)
_RAW_SOURCES = np.array([_RAW[name] for name in _RAW_NAMES if name in FEATURE_NAMES], dtype=np.intp)
_ALIGN_WIDTHS = np.array([8.0, 16.0, 32.0])
_ALIGN_MOD_TARGETS = np.array(
    [[FEATURE_NAMES.index(f"{channels}_mod{width}") for width in (8, 16, 32)] for channels in ("cin", "cout")]
)
_ALIGN_DIV_TARGETS = np.array(
    [[FEATURE_NAMES.index(f"{channels}_div{width}") for width in (8, 16, 32)] for channels in ("cin", "cout")]
)
_LOG_SOURCES = [_RAW["input_elems"], _RAW["output_elems"], _RAW["weight_elems"], _RAW["macs"]]
_LOG_TARGETS = [FEATURE_NAMES.index(name) for name in
                ("log_input_elems", "log_output_elems", "log_weight_elems", "log_macs")]
_F = {name: index for index, name in enumerate(FEATURE_NAMES)}


def _derive(raw: np.ndarray) -> np.ndarray:
    """The full feature matrix from the per-key raw quantities: ratios, logs and alignment, vectorized."""
    features = np.empty((len(raw), _N_FEATURES), dtype=np.float64)
    features[:, _RAW_TARGETS] = raw[:, _RAW_SOURCES]
    macs = raw[:, _RAW["macs"]]
    act_bytes = raw[:, _RAW["activation_bytes"]]
    bits = raw[:, _RAW["bits"]]
    weight_bytes = np.where(bits > 0, bits / 8.0, act_bytes)
    bytes_moved = (raw[:, _RAW["input_elems"]] + raw[:, _RAW["output_elems"]]) * act_bytes
    bytes_moved += raw[:, _RAW["weight_elems"]] * weight_bytes
    out0 = raw[:, _RAW["out0_elems"]]
    features[:, _F["effective_macs"]] = macs * (1.0 - raw[:, _RAW["sparsity"]])
    features[:, _F["bytes_moved"]] = bytes_moved
    features[:, _F["arithmetic_intensity"]] = np.divide(macs, bytes_moved, out=np.zeros_like(macs),
                                                         where=bytes_moved > 0)
    features[:, _F["macs_per_output"]] = np.divide(macs, out0, out=np.zeros_like(macs), where=out0 > 0)
    features[:, _LOG_TARGETS] = np.log1p(raw[:, _LOG_SOURCES])
    features[:, _F["log_bytes_moved"]] = np.log1p(bytes_moved)
    features[:, _F["inner_dim_mod8"]] = np.mod(raw[:, _RAW["inner_dim"]], 8.0)
    channels = raw[:, [_RAW["cin"], _RAW["cout"]]]
    remainders = np.mod(channels[:, :, None], _ALIGN_WIDTHS)
    features[:, _ALIGN_MOD_TARGETS] = remainders
    features[:, _ALIGN_DIV_TARGETS] = (remainders == 0) & (channels[:, :, None] > 0)
    return features


def kernel_features(key: KernelKey) -> list[float]:
    """Feature vector of one kernel key, in the order of FEATURE_NAMES."""
    return [float(value) for value in features_matrix([key])[0]]


def features_matrix(keys: Iterable[KernelKey], cached: bool = True) -> np.ndarray:
    """Feature matrix (n_keys x len(FEATURE_NAMES), float64) of several kernel keys.

    `cached=False` for keys whose results the caller keeps itself (the estimate memo): they would only
    push other keys out of the cache.
    """
    rows = [_raw_tuple(key) for key in keys] if cached else [_raw_features(key) for key in keys]
    if not rows:
        return np.zeros((0, _N_FEATURES), dtype=np.float64)
    return _derive(np.array(rows, dtype=np.float64))
