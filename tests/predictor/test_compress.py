"""Compression configs applied for real: pruning groups, sparsity, int8/fp16/int4, and the kernels that result."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from predictor.compression.apply import apply_config
from predictor.compression.config import config_json_schema, load_config, parse_config
from predictor.compression.pruning import analyze_channel_groups, kept_channels
from predictor.errors import ConfigError
from predictor.kernels.keys import extract_kernels
from predictor.runtime.optimizer import local_runtime
from profiler.backends.onnxruntime import random_feeds
from tests import factories

RUNTIME = local_runtime(1)


def run(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, random_feeds(session))[0]


def weight(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def test_config_resolution_defaults_globs_and_overrides() -> None:
    config = parse_config({"default": {"bits": 8, "prune_ratio": 0.3},
                           "layers": {"layer1.*": {"bits": 32}, "layer1.0.conv2": {"prune_ratio": 0.5}}})
    assert config.resolve("stem").bits == 8 and config.resolve("stem").prune_ratio == 0.3
    assert config.resolve("layer1.0.conv1").bits == 32 and config.resolve("layer1.0.conv1").prune_ratio == 0.3
    assert config.resolve("layer1.0.conv2").prune_ratio == 0.5


@pytest.mark.parametrize("layers", [
    {},
    {"layer1.0.conv2": {"bits": 16}, "fc": {"bits": 32}, "absent": {"bits": 4}},
    {"layer1.*": {"bits": 32}, "layer1.0.conv2": {"prune_ratio": 0.5}},
])
def test_the_distinct_resolutions_are_those_of_every_node(layers: dict[str, dict[str, object]]) -> None:
    names = {"stem", "layer1.0.conv1", "layer1.0.conv2", "fc"}
    config = parse_config({"default": {"bits": 8}, "layers": layers})
    assert config.resolutions(names) == {config.resolve(name) for name in names}
    everything_named = parse_config({"layers": {name: {"bits": 16} for name in names}})
    assert {r.bits for r in everything_named.resolutions(names)} == {16}


@pytest.mark.parametrize(("document", "fragment"), [
    ({"default": {"bits": 7}}, "default.bits"),
    ({"default": {"sparsity": 1.5}}, "default.sparsity"),
    ({"default": {"prune_ratio": -0.1}}, "default.prune_ratio"),
    ({"layers": {"x": {"sparsity_pattern": "4:8"}}}, "layers.x.sparsity_pattern"),
    ({"defaults": {}}, "defaults"),
    ([1, 2], "config"),
])
def test_bad_configs_name_the_field(document: object, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.")):
        parse_config(document)


def test_load_config_errors(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_published_schema_describes_the_fields() -> None:
    schema = json.dumps(config_json_schema())
    for field in ("bits", "sparsity", "sparsity_pattern", "prune_ratio", "round_to", "layers", "default"):
        assert field in schema


def test_glob_matching_nothing_is_an_error() -> None:
    with pytest.raises(ConfigError, match="matches no node"):
        apply_config(factories.gemm_model(), parse_config({"layers": {"nothing.*": {"bits": 8}}}))


def test_kept_channels_follow_torch_pruning() -> None:
    assert kept_channels(64, 0.3) == 44  # floor(64 * 0.7)
    assert kept_channels(64, 0.3, round_to=8) == 40
    assert kept_channels(10, 0.9) == 1
    assert kept_channels(8, 0.9, round_to=8) == 8


def test_residual_block_prunes_as_one_group() -> None:
    """conv_b's output and the block input meet in a residual Add: they are one group, never pruned apart."""
    model = factories.residual_model(channels=32, size=8)
    groups = analyze_channel_groups(model)
    # The block input is a graph input (locked), and the residual ties conv_b to it: only conv_a is prunable.
    assert sorted(n for nodes in groups.prunable_spaces().values() for n in nodes) == ["conv_a"]
    pruned = apply_config(model, parse_config({"default": {"prune_ratio": 0.5}}))
    assert weight(pruned, "conv_a.weight").shape == (16, 32, 3, 3)
    assert weight(pruned, "conv_a.bias").shape == (16,)
    assert weight(pruned, "conv_b.weight").shape == (32, 16, 3, 3)  # input channels follow
    assert run(pruned).shape == (1, 32, 8, 8)


def test_depthwise_follows_its_producer_and_classifier_is_kept() -> None:
    g = factories.GraphBuilder()
    y = g.conv("input", "expand", 16, 64, k=1)
    y = g.batchnorm(y, "expand_bn", 64)
    y = g.node("Relu", [y], "expand_relu")
    y = g.conv(y, "dw", 64, 64, k=3, group=64)
    y = g.node("Relu", [y], "dw_relu")
    y = g.conv(y, "project", 64, 24, k=1)
    y = g.node("GlobalAveragePool", [y], "gap")
    y = g.node("Flatten", [y], "flatten")
    y = g.node("Gemm", [y, g.weight("fc.weight", (10, 24)), g.weight("fc.bias", (10,))], "fc", transB=1)
    model = g.model({"input": [1, 16, 14, 14]}, y)
    pruned = apply_config(model, parse_config({"default": {"prune_ratio": 0.5}}))
    assert weight(pruned, "expand.weight").shape == (32, 16, 1, 1)
    assert weight(pruned, "expand_bn.scale").shape == (32,)
    assert weight(pruned, "dw.weight").shape == (32, 1, 3, 3)
    dw = next(n for n in pruned.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 32
    assert weight(pruned, "project.weight").shape == (12, 32, 1, 1)
    assert weight(pruned, "fc.weight").shape == (10, 12)  # classifier outputs kept, inputs follow
    assert run(pruned).shape == (1, 10)


def test_pruning_keeps_the_largest_channels() -> None:
    model = factories.gemm_model(batch=1, k=8, n=8)
    g = factories.GraphBuilder()
    y = g.node("Gemm", ["input", g.weight("a.weight", (8, 8)), g.weight("a.bias", (8,))], "a", transB=1)
    y = g.node("Relu", [y], "relu")
    y = g.node("Gemm", [y, g.weight("b.weight", (4, 8)), g.weight("b.bias", (4,))], "b", transB=1)
    model = g.model({"input": [1, 8]}, y)
    norms = np.abs(weight(model, "a.weight")).sum(axis=1)
    pruned = apply_config(model, parse_config({"layers": {"a": {"prune_ratio": 0.5}}}))
    kept = weight(pruned, "a.weight")
    expected = weight(model, "a.weight")[np.sort(np.argsort(-norms)[:4])]
    np.testing.assert_array_equal(kept, expected)


def test_unstructured_and_two_four_sparsity() -> None:
    model = factories.gemm_model(batch=1, k=64, n=32)
    sparse = apply_config(model, parse_config({"default": {"sparsity": 0.75}}))
    w = weight(sparse, "fc.weight")
    assert np.count_nonzero(w == 0) == int(0.75 * w.size)
    two_four = apply_config(model, parse_config({"default": {"sparsity_pattern": "2:4"}}))
    w = weight(two_four, "fc.weight")  # Gemm transB: [N, K], groups of 4 along K
    assert np.all(np.count_nonzero(w.reshape(32, 16, 4) == 0, axis=-1) >= 2)
    (fc,) = extract_kernels(two_four, RUNTIME)
    assert fc.key.sparsity_pattern == "2:4" and fc.key.sparsity == 0.5


def test_int8_runs_as_int8_kernels() -> None:
    model = factories.conv_bn_relu_model(channels=32, size=16, cin=16)
    quantized = apply_config(model, parse_config({"default": {"bits": 8}}))
    ops = {n.op_type for n in quantized.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    kernels = extract_kernels(quantized, RUNTIME)
    conv = next(k for k in kernels if "conv1" in k.nodes)
    assert conv.op_type == "QLinearConv" and conv.key.bits == 8
    assert run(quantized).shape == (1, 32, 16, 16)


def test_per_layer_bits_quantize_only_those_layers() -> None:
    g = factories.GraphBuilder()
    y = g.conv("input", "first", 8, 16)
    y = g.node("Relu", [y], "first_relu")
    y = g.conv(y, "second", 16, 16)
    model = g.model({"input": [1, 8, 16, 16]}, y)
    mixed = apply_config(model, parse_config({"default": {"bits": 8}, "layers": {"first*": {"bits": 32}}}))
    kernels = extract_kernels(mixed, RUNTIME)
    assert next(k for k in kernels if "second" in k.nodes).op_type == "QLinearConv"
    assert next(k for k in kernels if "first" in k.nodes).key.bits == 32


def test_fp16_and_int4_record_what_actually_runs() -> None:
    model = factories.matmul_add_gelu_model(tokens=16, dim=64, hidden=128)
    fp16 = extract_kernels(apply_config(model, parse_config({"default": {"bits": 16}})), RUNTIME)
    # Whatever the CPU provider does with fp16 (kernels or casts back to fp32) is what the keys say.
    assert any(k.key.dtype == "float16" or k.op_type == "Cast" for k in fp16)
    int4 = extract_kernels(apply_config(model, parse_config({"default": {"bits": 4}})), RUNTIME)
    nbits = [k for k in int4 if k.op_type == "MatMulNBits"]
    assert nbits and nbits[0].key.bits == 4 and nbits[0].key.weight == (64, 128)
