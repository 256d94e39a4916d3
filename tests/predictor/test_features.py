"""Kernel feature vectors: exact work counts per op family, robustness to missing shapes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from predictor.kernels.features import ACTIVATION_CODES, FEATURE_NAMES, features_matrix, kernel_features
from predictor.kernels.keys import KernelKey


def named(key: KernelKey) -> dict[str, float]:
    values = kernel_features(key)
    assert len(values) == len(FEATURE_NAMES)
    return dict(zip(FEATURE_NAMES, values, strict=True))


def conv_key(cin: int = 16, cout: int = 32, size: int = 28, k: int = 3, stride: int = 1, group: int = 1,
             activation: str | None = "Relu") -> KernelKey:
    out = (size + stride - 1) // stride
    return KernelKey(
        op_type="NchwcConv",
        inputs=((1, cin, size, size),),
        outputs=((1, cout, out, out),),
        weight=(cout, cin // group, k, k),
        activation=activation,
        attrs=(("group", group), ("kernel_shape", (k, k)), ("strides", (stride, stride))),
    )


def test_feature_names_are_unique_and_fixed_length() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == 52


def test_conv_features_count_macs_bytes_and_layout_exactly() -> None:
    f = named(conv_key())
    assert f["macs"] == 1 * 32 * 28 * 28 * 16 * 3 * 3 == 3_612_672
    assert f["input_elems"] == 16 * 28 * 28
    assert f["output_elems"] == 32 * 28 * 28
    assert f["weight_elems"] == 32 * 16 * 9
    # fp32: 4 bytes for activations and weights alike.
    assert f["bytes_moved"] == (12_544 + 25_088 + 4_608) * 4 == 168_960
    assert f["arithmetic_intensity"] == pytest.approx(3_612_672 / 168_960)
    assert f["log_macs"] == pytest.approx(math.log1p(3_612_672))
    assert f["macs_per_output"] == 144
    assert (f["cin"], f["cout"], f["out_spatial"], f["in_spatial"]) == (16, 32, 784, 784)
    assert (f["kernel_h"], f["kernel_w"], f["kernel_area"], f["stride"], f["group"]) == (3, 3, 9, 1, 1)
    assert f["is_depthwise"] == 0
    assert (f["cin_mod8"], f["cin_mod32"], f["cin_div16"], f["cin_div32"]) == (0, 16, 1, 0)
    assert (f["cout_mod8"], f["cout_div32"]) == (0, 1)
    assert f["activation_code"] == ACTIVATION_CODES["Relu"] == 1
    assert (f["bits"], f["activation_bytes"], f["n_data_inputs"], f["batch"]) == (32, 4, 1, 1)


def test_strided_depthwise_conv_with_misaligned_channels() -> None:
    f = named(conv_key(cin=30, cout=30, size=28, stride=2, group=30, activation="Clip"))
    assert f["macs"] == 30 * 14 * 14 * 1 * 9
    assert f["is_depthwise"] == 1 and f["group"] == 30 and f["cin"] == 30
    assert f["stride"] == 2 and f["out_spatial"] == 196
    assert (f["cout_mod8"], f["cout_div8"], f["cout_mod32"]) == (6, 0, 30)
    assert f["activation_code"] == ACTIVATION_CODES["Clip"]


def test_channels_last_int8_conv_reads_channels_from_the_last_dim() -> None:
    key = KernelKey(
        op_type="QLinearConv", inputs=((1, 28, 28, 16),), outputs=((1, 28, 28, 32),), weight=(32, 16, 3, 3),
        attrs=(("channels_last", 1), ("group", 1), ("kernel_shape", (3, 3))), dtype="uint8", bits=8,
    )
    f = named(key)
    assert (f["cin"], f["cout"], f["out_spatial"], f["channels_last"]) == (16, 32, 784, 1)
    assert f["macs"] == 3_612_672
    assert f["bytes_moved"] == 12_544 + 25_088 + 4_608
    assert f["activation_bytes"] == 1 and f["bits"] == 8


def test_gemm_with_transposed_weight() -> None:
    key = KernelKey(op_type="Gemm", inputs=((1, 256),), outputs=((1, 128),), weight=(128, 256),
                    attrs=(("transB", 1),))
    f = named(key)
    assert (f["matmul_m"], f["matmul_n"], f["matmul_k"]) == (1, 128, 256)
    assert f["macs"] == 1 * 128 * 256
    assert (f["cin"], f["cout"]) == (256, 128)
    assert f["bytes_moved"] == (256 + 128 + 128 * 256) * 4


def test_batched_matmul_without_weight_counts_batch_dims() -> None:
    key = KernelKey(op_type="FusedMatMul", inputs=((1, 4, 16, 64), (1, 4, 64, 16)), outputs=((1, 4, 16, 16),),
                    attrs=(("alpha", 0.25), ("transA", 0), ("transB", 0)))
    f = named(key)
    assert (f["batch"], f["matmul_m"], f["matmul_n"], f["matmul_k"]) == (4, 16, 16, 64)
    assert f["macs"] == 4 * 16 * 16 * 64
    assert f["n_data_inputs"] == 2


def test_int4_matmul_weights_count_half_a_byte() -> None:
    key = KernelKey(op_type="MatMulNBits", inputs=((1, 16, 512),), outputs=((1, 16, 1024),), weight=(512, 1024),
                    attrs=(("K", 512), ("N", 1024), ("bits", 4)), bits=4)
    f = named(key)
    assert (f["matmul_m"], f["matmul_n"], f["matmul_k"]) == (16, 1024, 512)
    assert f["bytes_moved"] == (16 * 512 + 16 * 1024) * 4 + 512 * 1024 * 0.5


def test_pooling_counts_window_area_per_output() -> None:
    key = KernelKey(op_type="NchwcMaxPool", inputs=((1, 64, 112, 112),), outputs=((1, 64, 56, 56),),
                    attrs=(("kernel_shape", (3, 3)), ("strides", (2, 2))))
    f = named(key)
    assert f["macs"] == 64 * 56 * 56 * 9
    assert (f["kernel_area"], f["stride"], f["cin"], f["cout"]) == (9, 2, 64, 64)


def test_elementwise_and_unknown_ops_count_elements() -> None:
    add = named(KernelKey(op_type="Add", inputs=((1, 32, 28, 28), (1, 32, 28, 28)), outputs=((1, 32, 28, 28),)))
    assert add["macs"] == 2 * 32 * 28 * 28
    assert add["n_data_inputs"] == 2
    norm = named(KernelKey(op_type="LayerNormalization", inputs=((1, 16, 768),), outputs=((1, 16, 768),)))
    assert norm["macs"] == 16 * 768 and norm["cin"] == 768 and norm["inner_dim"] == 768
    unknown = named(KernelKey(op_type="SomethingNew", inputs=((3, 5),), outputs=((3, 5),), activation="Mish"))
    assert unknown["macs"] == 15
    assert unknown["activation_code"] == max(ACTIVATION_CODES.values()) + 1


def test_sparsity_flags_and_effective_macs() -> None:
    dense = conv_key()
    sparse = KernelKey(**{**dense.__dict__, "sparsity": 0.5, "sparsity_pattern": "2:4"})
    f = named(sparse)
    assert (f["sparsity"], f["is_2_4"], f["is_unstructured"]) == (0.5, 1, 0)
    assert f["effective_macs"] == f["macs"] / 2


@pytest.mark.parametrize("op_type", ["NchwcConv", "Gemm", "MatMul", "NchwcMaxPool", "Softmax", "Reshape"])
def test_missing_shapes_give_zeros_not_errors(op_type: str) -> None:
    key = KernelKey(op_type=op_type, inputs=(None,), outputs=(None,), weight=None)
    f = named(key)
    assert all(math.isfinite(v) for v in f.values())
    assert f["macs"] == f["input_elems"] == f["output_elems"] == f["bytes_moved"] == 0
    assert f["arithmetic_intensity"] == 0
    empty = named(KernelKey(op_type=op_type, inputs=(), outputs=()))
    assert empty["macs"] == 0 and empty["n_data_inputs"] == 0


def test_matrix_matches_single_vectors_and_handles_unhashable_attrs() -> None:
    keys = [conv_key(), conv_key(cin=8, cout=12, k=1), KernelKey.from_dict(conv_key().to_dict())]
    matrix = features_matrix(keys)
    assert matrix.shape == (3, len(FEATURE_NAMES)) and matrix.dtype == np.float64
    for row, key in zip(matrix, keys, strict=True):
        assert row.tolist() == kernel_features(key)
    # A hand-built key with a list attribute cannot be cached but still yields the same vector.
    listed = KernelKey(**{**conv_key().__dict__, "attrs": (("group", 1), ("kernel_shape", [3, 3]),
                                                           ("strides", [1, 1]))})
    assert kernel_features(listed) == kernel_features(conv_key())
    assert features_matrix([]).shape == (0, len(FEATURE_NAMES))


def test_int8_signedness_and_weight_scaling_are_features() -> None:
    """S8S8 per-tensor (quantize_static's defaults) and U8S8 per-channel are other kernels on x86 CPUs."""
    base = KernelKey(op_type="QLinearConv", inputs=((1, 16, 28, 28),), outputs=((1, 32, 28, 28),),
                     weight=(32, 16, 3, 3), attrs=(("channels_last", 1), ("weight_scale", "channel")), dtype="uint8",
                     bits=8)
    signed = named(replace(base, dtype="int8", attrs=(("channels_last", 1), ("weight_scale", "tensor"))))
    unsigned = named(base)
    assert (unsigned["signed_activations"], unsigned["per_channel_weights"]) == (0, 1)
    assert (signed["signed_activations"], signed["per_channel_weights"]) == (1, 0)
