"""Kernel extraction: what onnxruntime really executes, mapped back to original nodes, with stable keys."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from predictor.compression.apply import apply_config
from predictor.compression.config import parse_config
from predictor.errors import InvalidModelError
from predictor.kernels.keys import Kernel, KernelKey, extract_kernels, weight_sparsity
from predictor.model.graph import load_model
from predictor.runtime.optimizer import local_runtime
from tests import factories

RUNTIME = local_runtime(threads=1)
DATA = Path(__file__).resolve().parents[1] / "data"


def compute_kernels(kernels: list[Kernel]) -> list[Kernel]:
    """Kernels that cover original nodes (drop layout reorders and reshapes the runtime inserted)."""
    return [k for k in kernels if not k.inserted]


def by_name(kernels: list[Kernel]) -> dict[str, Kernel]:
    return {k.name: k for k in kernels}


def test_conv_bn_relu_is_one_kernel_naming_all_three_nodes() -> None:
    kernels = compute_kernels(extract_kernels(factories.conv_bn_relu_model(), RUNTIME))
    assert len(kernels) == 1
    conv = kernels[0]
    assert conv.name == "conv1"
    assert set(conv.nodes) == {"conv1", "bn1", "relu1"}
    assert conv.op_type.endswith("Conv")
    assert conv.key.activation == "Relu"
    assert conv.key.inputs[0] == (1, 16, 28, 28)
    assert conv.key.weight == (32, 16, 3, 3)
    assert conv.key.outputs == ((1, 32, 28, 28),)
    assert conv.key.attr("kernel_shape") == (3, 3)
    assert conv.key.bits == 32 and conv.key.dtype == "float32"


def test_layout_reorders_are_kernels_of_their_own() -> None:
    kernels = extract_kernels(factories.conv_bn_relu_model(), RUNTIME)
    inserted = [k for k in kernels if k.inserted]
    # onnxruntime's NCHWc layout on x86 reorders in and out of the blocked format around the conv.
    if any(k.op_type.startswith("Nchwc") for k in kernels):
        assert {k.op_type for k in inserted} == {"ReorderInput", "ReorderOutput"}
        assert all(k.nodes == () for k in inserted)


def test_depthwise_conv_keeps_group_and_fuses_clip() -> None:
    (dw,) = compute_kernels(extract_kernels(factories.depthwise_model(channels=32), RUNTIME))
    assert dw.key.attr("group") == 32
    assert dw.key.weight == (32, 1, 3, 3)
    assert dw.key.activation == "Clip"
    assert set(dw.nodes) == {"dw", "relu6"}


def test_residual_block_covers_every_original_node_once() -> None:
    model = factories.residual_model()
    kernels = extract_kernels(model, RUNTIME)
    covered = [name for k in kernels for name in k.nodes]
    assert sorted(covered) == sorted(node.name for node in model.graph.node)
    names = by_name(kernels)
    assert "relu_a" in names["conv_a"].nodes
    assert names["conv_a"].key.activation == "Relu"
    # The residual Add is either fused into conv_b (sum input) or runs as its own Add kernel.
    add_owner = next(k for k in kernels if "add" in k.nodes)
    if add_owner.name == "conv_b":
        assert len(add_owner.key.inputs) == 2
    else:
        assert add_owner.op_type == "Add"
        assert add_owner.key.inputs == ((1, 32, 28, 28), (1, 32, 28, 28))


def test_gemm_key() -> None:
    (fc,) = extract_kernels(factories.gemm_model(batch=4, k=256, n=128), RUNTIME)
    assert fc.op_type == "Gemm"
    assert fc.key.inputs == ((4, 256),)
    assert fc.key.weight == (128, 256)
    assert fc.key.outputs == ((4, 128),)
    assert fc.key.attr("transB") == 1


def test_matmul_add_gelu_fuses_into_gemm_and_gelu() -> None:
    kernels = compute_kernels(extract_kernels(factories.matmul_add_gelu_model(tokens=16, dim=64, hidden=256),
                                              RUNTIME))
    ops = [k.op_type for k in kernels]
    assert ops == ["Gemm", "Gelu"]
    gemm, gelu = kernels
    assert set(gemm.nodes) == {"fc1", "fc1.bias_add"}
    assert gemm.key.inputs == ((16, 64),) and gemm.key.outputs == ((16, 256),)
    assert gemm.key.weight == (64, 256)
    assert set(gelu.nodes) == {"gelu.div", "gelu.erf", "gelu.add", "gelu.mul", "gelu.mul_half"}
    assert gelu.key.inputs == ((1, 16, 256),)


def test_layernorm_is_one_kernel() -> None:
    (ln,) = extract_kernels(factories.layernorm_model(tokens=16, dim=64), RUNTIME)
    assert ln.op_type == "LayerNormalization"
    assert ln.key.inputs == ((1, 16, 64),)
    # Attributes at their schema default are left out of keys, written or not.
    assert ln.key.attr("epsilon") is None and ln.key.attr("axis") is None


def test_attention_block_kernels() -> None:
    model = factories.attention_model(tokens=16, dim=64, heads=4)
    kernels = extract_kernels(model, RUNTIME)
    covered = sorted(name for k in kernels for name in k.nodes)
    assert covered == sorted(node.name for node in model.graph.node)
    names = by_name(kernels)
    # The scale multiply folds into the QK^T product (FusedMatMul) unless the runtime fused all of attention.
    qk_owner = next(k for k in kernels if "qk" in k.nodes)
    assert "qk_scale" in qk_owner.nodes
    assert names["softmax"].key.inputs == ((1, 4, 16, 16),)
    assert names["pv"].key.outputs == ((1, 4, 16, 16),)
    for proj in ("q_proj", "k_proj", "v_proj", "proj"):
        owner = next(k for k in kernels if proj in k.nodes)
        assert owner.key.weight == (64, 64)


def test_qdq_int8_conv_becomes_one_int8_kernel() -> None:
    kernels = extract_kernels(factories.qdq_conv_model(cin=16, cout=32, size=28), RUNTIME)
    conv_kernels = [k for k in kernels if "conv" in k.nodes]
    assert len(conv_kernels) == 1
    conv = conv_kernels[0]
    assert conv.op_type == "QLinearConv"
    assert conv.key.bits == 8
    assert conv.key.dtype in {"uint8", "int8"}
    assert conv.key.weight == (32, 16, 3, 3)
    # The dequantize in front of the conv and the quantize behind it are folded into that kernel.
    assert {"input_dequantize", "conv", "conv_quantize"} <= set(conv.nodes)
    assert not any(k.op_type == "Conv" for k in kernels)


def test_key_round_trips_through_json_and_hashes_stably() -> None:
    kernels = extract_kernels(factories.attention_model(), RUNTIME)
    for kernel in kernels:
        restored = KernelKey.from_dict(json.loads(kernel.key.to_json()))
        assert restored == kernel.key
        assert hash(restored) == hash(kernel.key)
        assert restored.key_hash == kernel.key.key_hash
        assert Kernel.from_dict(json.loads(json.dumps(kernel.to_dict()))) == kernel
    assert len({k.key.key_hash for k in kernels}) == len({k.key for k in kernels})


def test_key_json_is_its_dict_as_canonical_json_for_the_keys_of_real_exports() -> None:
    """`to_json`, the basis of every key hash in every table, writes `to_dict` as sorted, spaceless JSON: checked
    on the kernels of real exports (attention, int8, int4, depthwise, layout reorders) as they are and pruned."""
    checked = 0
    for name in ("tiny_bert.onnx", "tiny_bert_dynamic_int8.onnx", "tiny_bert_int4.onnx",
                 "tiny_mobilenet_v2_qdq.onnx", "tiny_mobilenet_v2_prune50.onnx"):
        model = load_model(DATA / "real" / name)
        pruned = {"default": {"prune_ratio": 0.3, "sparsity": 0.5, "sparsity_pattern": "2:4"}}
        for config in ({}, *(() if "int" in name or "qdq" in name else (pruned,))):
            for kernel in extract_kernels(apply_config(model, parse_config(config)), RUNTIME):
                key = kernel.key
                assert key.to_json() == json.dumps(key.to_dict(), sort_keys=True, separators=(",", ":"))
                checked += 1
    assert checked > 100


def test_key_hash_is_the_same_in_another_process(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(factories.conv_bn_relu_model(), path)
    here = [k.key.key_hash for k in extract_kernels(onnx.load(path), RUNTIME)]
    script = (
        "import onnx,sys;from predictor.kernels.keys import extract_kernels;"
        "from predictor.runtime.optimizer import local_runtime;"
        f"print(','.join(k.key.key_hash for k in extract_kernels(onnx.load({str(path)!r}), local_runtime(1))))"
    )
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert other.stdout.strip().split(",") == here


def test_same_kernel_in_two_models_has_the_same_key() -> None:
    """A kernel in a small model and the same kernel in a bigger one match: what profiling relies on."""
    single = compute_kernels(extract_kernels(factories.gemm_model(batch=1, k=256, n=128), RUNTIME))[0]
    g = factories.GraphBuilder()
    y = g.node("Gemm", ["input", g.weight("fc.weight", (128, 256)), g.weight("fc.bias", (128,))], "fc", transB=1)
    y = g.node("Relu", [y], "act")
    y = g.node("Gemm", [y, g.weight("fc2.weight", (10, 128)), g.weight("fc2.bias", (10,))], "fc2", transB=1)
    bigger = by_name(extract_kernels(g.model({"input": [1, 256]}, y), RUNTIME))
    # Relu fuses into the first Gemm here only if the runtime does so; compare the unfused shapes.
    first = bigger["fc"]
    assert first.key.inputs == single.key.inputs and first.key.weight == single.key.weight
    if first.key.activation is None and first.op_type == single.op_type:
        assert first.key == single.key


def test_symbolic_dimension_needs_input_shape() -> None:
    model = factories.symbolic_batch_model()
    with pytest.raises(InvalidModelError, match=r"symbolic dimension 'batch'.*--input-shape input="):
        extract_kernels(model, RUNTIME)
    (fc,) = extract_kernels(model, RUNTIME, input_shapes={"input": [8, 16]})
    assert fc.key.inputs == ((8, 16),) and fc.key.outputs == ((8, 8),)


def test_input_shape_for_unknown_input_is_rejected() -> None:
    with pytest.raises(InvalidModelError, match="unknown input"):
        extract_kernels(factories.gemm_model(), RUNTIME, input_shapes={"nope": [1, 2]})


def test_weight_sparsity_and_two_four_pattern() -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((64, 32)).astype(np.float32)
    assert weight_sparsity(dense) == (0.0, "dense")
    unstructured = dense.copy()
    unstructured[np.abs(unstructured) < np.quantile(np.abs(unstructured), 0.9)] = 0
    assert weight_sparsity(unstructured) == (0.9, "unstructured")
    two_four = dense.copy()
    two_four.reshape(16, 4, 32)[:, :2, :] = 0  # two zeros in every group of 4 along K
    assert weight_sparsity(two_four) == (0.5, "2:4")


def test_sparse_weights_show_in_the_key() -> None:
    model = factories.gemm_model(batch=1, k=256, n=128)
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[np.abs(weight) < np.quantile(np.abs(weight), 0.75)] = 0
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, model.graph.initializer[0].name))
    (fc,) = extract_kernels(model, RUNTIME)
    assert fc.key.sparsity == 0.75 and fc.key.sparsity_pattern == "unstructured"
