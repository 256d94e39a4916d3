"""Configs applied to files other tools wrote: every compressed model loads and runs in onnxruntime, dynamic int8
is what onnxruntime's quantize_dynamic writes, and what a config cannot do is said."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic

from predictor.compression.apply import apply_config
from predictor.compression.config import parse_config
from predictor.compression.pruning import fold_constant_identities
from predictor.errors import ConfigError
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel, predict_config, rank_candidates, weight_layers
from predictor.kernels.keys import KernelKey, extract_kernels, name_unnamed_nodes
from predictor.model.graph import load_model, set_input_shapes
from predictor.runtime.optimizer import local_runtime

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
MANIFEST = {r["name"]: r for r in json.loads((REAL / "manifest.json").read_text())["models"]}
RUNTIME = local_runtime(1)


def real_model(name: str) -> onnx.ModelProto:
    record = MANIFEST[name]
    shapes = {n: [1 if isinstance(d, str) else d for d in dims] for n, dims in record["input_shapes"].items()}
    return name_unnamed_nodes(set_input_shapes(load_model(REAL / record["file"]), shapes))


def runs(model: onnx.ModelProto) -> None:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {arg.name: np.zeros(arg.shape, np.int64) if "int64" in arg.type
             else np.random.default_rng(0).standard_normal(arg.shape).astype(np.float32)
             for arg in session.get_inputs()}
    session.run(None, feeds)


def mixed_ratios(model: onnx.ModelProto, **extra: object) -> dict:
    """Per-layer ratios, as compression tools send them: each conv its own ratio."""
    layers = [name for name, op in weight_layers(model).items() if op == "Conv"]
    ratios = [0.1, 0.6, 0.35, 0.5, 0.2, 0.45]
    return {"default": {"prune_ratio": 0.25, **extra},
            "layers": {name: {"prune_ratio": ratios[i % len(ratios)]} for i, name in enumerate(layers)}}


@pytest.mark.parametrize("name", ["tiny_mobilenet_v2", "tiny_mobilenet_v2_dynamo", "tiny_resnet18_prune88"])
@pytest.mark.parametrize("extra", [{}, {"bits": 8}, {"bits": 8, "quantization": "dynamic"}],
                         ids=["fp32", "int8", "dynamic-int8"])
def test_mixed_per_layer_ratios_then_int8_build_models_the_runtime_runs(name: str, extra: dict) -> None:
    """Exporters share equal initializers between layers (through Identity nodes, or by name); pruned to other
    channels, each layer gets its own (this built `bias must be a 1D tensor of size output_channels` before)."""
    model = real_model(name)
    compressed = apply_config(model, parse_config(mixed_ratios(model, **extra)))
    runs(compressed)
    before = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    after = sum(int(np.prod(init.dims)) for init in compressed.graph.initializer)
    assert after < 0.9 * before


def test_shared_initializers_are_folded_out_of_identity_nodes() -> None:
    model = real_model("tiny_mobilenet_v2")
    identities = [n for n in model.graph.node if n.op_type == "Identity"]
    assert identities  # the TorchScript exporter's way of sharing equal initializers
    folded = fold_constant_identities(model)
    assert not any(n.op_type == "Identity" for n in folded.graph.node)
    assert {n.output[0] for n in identities} <= {init.name for init in folded.graph.initializer}


def test_pruning_a_pruned_file_then_int8_runs() -> None:
    """torch-pruning's output pruned again and quantized (the 'operands could not be broadcast' crash)."""
    model = real_model("tiny_mobilenet_v2_prune50")
    runs(apply_config(model, parse_config({"default": {"prune_ratio": 0.3, "bits": 8}})))


def test_dynamic_int8_is_what_quantize_dynamic_writes() -> None:
    """The config's dynamic int8 and the file onnxruntime's quantize_dynamic wrote run the same kernels."""
    ours = PreparedModel.create(real_model("tiny_bert"), RUNTIME)
    config = parse_config({"default": {"bits": 8, "quantization": "dynamic"}})
    from_config = Counter(k.key.key_hash for k in ours.kernels(config))
    from_file = Counter(k.key.key_hash for k in extract_kernels(real_model("tiny_bert_dynamic_int8"), RUNTIME))
    assert from_config == from_file
    ops = Counter(k.op_type for k in ours.kernels(config))
    assert ops["DynamicQuantizeMatMul"] + ops["MatMulIntegerToFloat"] >= 8


def test_static_int8_stays_the_default() -> None:
    prepared = PreparedModel.create(real_model("tiny_bert"), RUNTIME)
    ops = Counter(k.op_type for k in prepared.kernels(parse_config({"default": {"bits": 8}})))
    assert ops["QLinearMatMul"] > 0 and ops["DynamicQuantizeMatMul"] == 0


def test_quantized_layers_keep_the_users_names() -> None:
    """quantize_dynamic renames layers ("..._quant"); kernels and layer patterns use the exported names again."""
    model = real_model("tiny_bert")
    quantized = apply_config(model, parse_config({"default": {"bits": 8, "quantization": "dynamic"}}))
    names = {n.name for n in model.graph.node}
    layers = [n for n in quantized.graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert layers and all(n.name in names for n in layers)


def test_pruning_a_text_model_prunes_its_mlp_and_says_what_it_left_whole() -> None:
    prepared = PreparedModel.create(real_model("tiny_bert"), RUNTIME)
    config = parse_config({"default": {"prune_ratio": 0.5}})
    kernels = prepared.kernels(config)
    warnings = prepared.config_warnings(config, kernels)
    assert any("leaves" in w and "attention" in w for w in warnings), warnings
    # The MLP's 128 hidden channels went to 64; the attention and hidden width (64) stayed.
    before = [k.key.weight for k in prepared.kernels() if k.key.weight is not None]
    after = [k.key.weight for k in kernels if k.key.weight is not None]
    assert sum(128 in w for w in before) >= 4 and not any(128 in w for w in after)
    assert len(after) == len(before)


def test_a_config_that_changes_nothing_says_so() -> None:
    prepared = PreparedModel.create(real_model("tiny_bert"), RUNTIME)
    query = next(name for name in weight_layers(prepared.model) if "query" in name)
    config = parse_config({"layers": {query: {"prune_ratio": 0.5}}})
    warnings = prepared.config_warnings(config, prepared.kernels(config))
    assert any("changes nothing" in w for w in warnings)
    assert any("changes no kernel" in w for w in warnings)


def test_a_prediction_states_its_warnings_and_whether_it_rests_on_guesses() -> None:
    prepared = PreparedModel.create(real_model("tiny_bert"), RUNTIME)
    keys = [k.key for k in prepared.kernels()]
    table = {key: 0.01 for key in keys}
    predictor = DevicePredictor(device="d", table={key.key_hash: ms for key, ms in table.items()})
    query = next(name for name in weight_layers(prepared.model) if "query" in name)
    estimate = predict_config(predictor, prepared, parse_config({"layers": {query: {"prune_ratio": 0.5}}}))
    assert estimate.reliable and any("changes nothing" in w for w in estimate.warnings)
    unknown = KernelKey(op_type="Gemm", inputs=(None,), outputs=((1, 4),), weight=(4, 4))
    guessed = predictor.summarize_many([[*keys, unknown]])[0]
    assert not guessed.reliable
    assert any("could not be inferred" in w for w in guessed.warnings)


def _layer_weights(model: onnx.ModelProto, op_type: str) -> list[tuple[int, ...]]:
    dims = {init.name: tuple(init.dims) for init in model.graph.initializer}
    return [dims[node.input[1]] for node in model.graph.node if node.op_type == op_type and node.input[1] in dims]


def test_a_dynamic_int8_file_is_pruned_as_its_float_model_is() -> None:
    """quantize_dynamic's file (per tensor, its default): its MLP's int8 weights are narrowed, the runtime runs it,
    what pruning left whole is said, and ranking's keys are those of the file compressed for real."""
    prepared = PreparedModel.create(real_model("tiny_bert_dynamic_int8"), RUNTIME)
    config = parse_config({"default": {"prune_ratio": 0.5}})
    before, compressed = _layer_weights(prepared.model, "MatMulInteger"), prepared.compressed(config)
    runs(compressed)
    after = _layer_weights(compressed, "MatMulInteger")
    # Each of the two blocks' MLP went from 128 hidden channels to 64, in both its layers; the attention's 64 stayed.
    assert sum(128 in w for w in before) == 4 and not any(128 in w for w in after) and len(after) == len(before)
    kernels = prepared.kernels(config)
    assert any("leaves" in w and "attention" in w for w in prepared.config_warnings(config, kernels))
    assert prepared.fast_keys(config) == [k.key for k in kernels]


def test_pruning_a_qdq_file_is_said_to_change_nothing_and_ranking_agrees() -> None:
    """A QDQ file's weights are quantized already: pruning leaves them (prune the float model, then quantize), the
    answer says so, and ranking predicts the file as it is rather than pruned channels that never come."""
    prepared = PreparedModel.create(real_model("tiny_mobilenet_v2_qdq"), RUNTIME)
    config = parse_config({"default": {"prune_ratio": 0.5}})
    kernels = prepared.kernels(config)
    warnings = prepared.config_warnings(config, kernels)
    assert any("changes nothing" in w and "quantized already" in w for w in warnings), warnings
    assert prepared.fast_keys(config) == [k.key for k in kernels] == [k.key for k in prepared.kernels()]


def test_ranking_a_quantized_file_answers_what_it_can_and_refuses_what_it_cannot() -> None:
    """Quantizing a QDQ file again fails; ranking names that candidate's error and ranks the others."""
    prepared = PreparedModel.create(real_model("tiny_mobilenet_v2_qdq"), RUNTIME)
    predictor = DevicePredictor(device="d", table={k.key.key_hash: 0.01 for k in prepared.kernels()})
    ranking = rank_candidates(predictor, prepared, [("fp16", {"default": {"bits": 16}}),
                                                    ("int8", {"default": {"bits": 8}})], fast=True, skip_failed=True)
    assert [row["name"] for row in ranking["ranked"]] == ["fp16"]
    assert [row["name"] for row in ranking["failed"]] == ["int8"]
    assert "cannot be compressed with" in ranking["failed"][0]["error"]
    assert "it is int8 already (QDQ layer" in ranking["failed"][0]["error"]


@pytest.mark.parametrize(("name", "raw"), [
    ("tiny_mobilenet_v2_qdq", {"bits": 8}),
    ("tiny_mobilenet_v2_prune50_qdq", {"prune_ratio": 0.3, "bits": 8}),
    ("tiny_mobilenet_v2_qdq_u8pc", {"bits": 8, "quantization": "dynamic"}),
    ("tiny_bert_dynamic_int8", {"bits": 8}),
], ids=["qdq-static", "pruned-qdq-static", "qdq-dynamic", "dynamic-static"])
def test_quantizing_an_int8_file_again_is_refused_saying_why(name: str, raw: dict) -> None:
    """Static int8 over a QDQ file put a second QDQ pair on every activation; the other three failed inside the
    quantizer ("'..._output_0_scale'", "Expected ... to be an initializer")."""
    with pytest.raises(ConfigError, match=r"cannot quantize this model again: it is int8 already \((QDQ|MatMulInteger) "
                                          r"layer '.+'\); send the float model"):
        apply_config(real_model(name), parse_config({"default": raw}))


def test_dynamic_int8_over_a_dynamic_int8_file_is_answered_and_said_to_change_nothing() -> None:
    prepared = PreparedModel.create(real_model("tiny_bert_dynamic_int8"), RUNTIME)
    config = parse_config({"default": {"bits": 8, "quantization": "dynamic"}})
    kernels = prepared.kernels(config)
    assert [k.key for k in kernels] == [k.key for k in prepared.kernels()]
    assert any("changes no kernel" in w for w in prepared.config_warnings(config, kernels))


def test_fp16_that_fails_on_an_int8_file_says_the_file_is_int8() -> None:
    with pytest.raises(ConfigError, match=r"fp16 conversion failed: .* \(this model is int8 already: QDQ layer"):
        apply_config(real_model("tiny_mobilenet_v2_qdq_u8pc"), parse_config({"default": {"bits": 16}}))


def test_a_per_channel_dynamic_int8_file_keeps_its_channels_and_says_so(tmp_path: Path) -> None:
    """quantize_dynamic per channel scales each layer's output by a tensor it computes at run time from the weight
    scales: the pruner cannot narrow that, so the layers stay whole, the answer says so, and ranking agrees."""
    onnx.save(real_model("tiny_bert"), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8)
    prepared = PreparedModel.create(load_model(tmp_path / "int8.onnx"), RUNTIME)
    assert any(len(dims) == 1 and dims[0] == 128 for dims in (tuple(i.dims) for i in prepared.model.graph.initializer))
    config = parse_config({"default": {"prune_ratio": 0.5}})
    runs(prepared.compressed(config))
    kernels = prepared.kernels(config)
    assert any("changes nothing" in w for w in prepared.config_warnings(config, kernels))
    assert prepared.fast_keys(config) == [k.key for k in kernels] == [k.key for k in prepared.kernels()]


def test_a_file_onnxruntime_optimized_prunes_its_fused_int8_layers_with_their_scales(tmp_path: Path) -> None:
    """Saved after onnxruntime's own optimizer, a per-channel dynamic int8 file has DynamicQuantizeMatMul layers that
    hold their weight scales, zero points and bias: pruning narrows them all, and the runtime runs the result."""
    onnx.save(real_model("tiny_bert"), tmp_path / "float.onnx")
    quantize_dynamic(tmp_path / "float.onnx", tmp_path / "int8.onnx", per_channel=True, weight_type=QuantType.QInt8)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), options, providers=["CPUExecutionProvider"])
    prepared = PreparedModel.create(load_model(tmp_path / "optimized.onnx"), RUNTIME)
    compressed = prepared.compressed(parse_config({"default": {"prune_ratio": 0.5}}))
    runs(compressed)
    dims = {init.name: tuple(init.dims) for init in compressed.graph.initializer}
    fused = [[dims.get(name) for name in node.input[1:]] for node in compressed.graph.node
             if node.op_type == "DynamicQuantizeMatMul"]
    # The MLP's first layer ([64, 128] and three parameters of 128) went to 64 columns, its parameters with it.
    assert fused and [(64, 64), (64,), (64,), (64,)] in fused and not any((128,) in shapes for shapes in fused)
