"""Kernels of files other tools wrote: torch.onnx.export (both exporters), Hugging Face models, onnxruntime's
quantizers, torch-pruning. The files are in tests/data/real (`benchmarks/real_exports.py --set tests` made them).

Every kernel's shapes are held against onnxruntime's own: its per-node profiler reports the shapes each
executed node ran with.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from predictor.errors import InvalidModelError
from predictor.kernels.keys import Kernel, extract_kernels, kernels_from_optimized, name_unnamed_nodes
from predictor.model.graph import load_model, set_input_shapes
from predictor.runtime.optimizer import local_runtime, nchwc_block_size

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
MANIFEST = json.loads((REAL / "manifest.json").read_text())["models"]
RUNTIME = local_runtime(1)
_HEAVY = ("Conv", "Gemm", "MatMul", "Attention", "LayerNormalization", "Softmax")


def fixed_shapes(record: dict) -> dict[str, list[int]]:
    return {name: [1 if isinstance(d, str) else d for d in dims] for name, dims in record["input_shapes"].items()}


def runtime_view(model: onnx.ModelProto) -> tuple[list[Kernel], dict[str, tuple[list[list[int]], list[list[int]]]]]:
    """The kernels of one session's optimized graph, and what onnxruntime's profiler says each node of that session
    read and wrote (its own shapes). One session for both: the runtime numbers the nodes it inserts
    ("ReorderOutput_token_18") in an order that differs from session to session."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = f"{tmp}/profile"
        options.optimized_model_filepath = f"{tmp}/optimized.onnx"
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        fixed = name_unnamed_nodes(onnx.ModelProto.FromString(model.SerializeToString()))
        kernels = kernels_from_optimized(fixed, onnx.load(f"{tmp}/optimized.onnx", load_external_data=False),
                                         nchwc_block=nchwc_block_size(RUNTIME))
        feeds = {}
        for arg in session.get_inputs():
            shape = [int(d) for d in arg.shape]
            feeds[arg.name] = np.zeros(shape, np.int64) if "int64" in arg.type else \
                np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    view = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            args = event["args"]
            view[event["name"].removesuffix("_kernel_time")] = (
                [next(iter(entry.values())) for entry in args["input_type_shape"]],
                [next(iter(entry.values())) for entry in args["output_type_shape"]])
    return kernels, view


def kernels_of(name: str, batch: int = 1) -> tuple[onnx.ModelProto, list[Kernel]]:
    record = next(r for r in MANIFEST if r["name"] == name)
    shapes = fixed_shapes(record)
    for dims in shapes.values():
        dims[0] = batch
    model = set_input_shapes(load_model(REAL / record["file"]), shapes)
    return model, extract_kernels(model, RUNTIME)


@pytest.mark.parametrize("name", [r["name"] for r in MANIFEST])
def test_every_kernel_has_the_shapes_the_runtime_runs_it_with(name: str) -> None:
    model, kernels = kernels_of(name)
    assert all(shape is not None for k in kernels for shape in (*k.key.inputs, *k.key.outputs))
    kernels, seen = runtime_view(model)
    compared = 0
    for kernel in kernels:
        assert all(shape is not None for shape in (*kernel.key.inputs, *kernel.key.outputs)), kernel.name
        ran = seen.get(kernel.runtime_node)
        if ran is None:
            continue  # a node the runtime left unnamed in its saved graph
        outputs = ran[1][:len(kernel.key.outputs)]
        if kernel.key.attr("channels_last") == 1 and kernel.key.weight is not None and len(kernel.key.weight) == 4:
            # int8 convs run NHWC; their keys say NCHW, so that one conv has one key wherever it sits.
            outputs = [[d[0], d[3], d[1], d[2]] if len(d) == 4 else d for d in outputs]
        assert [list(s) for s in kernel.key.outputs] == outputs, kernel.name
        compared += 1
    assert compared >= 0.9 * len(kernels)


@pytest.mark.parametrize("name", [r["name"] for r in MANIFEST])
def test_every_compute_kernel_names_the_exported_nodes_it_runs(name: str) -> None:
    model, kernels = kernels_of(name)
    exported = {node.name for node in model.graph.node}
    heavy = [k for k in kernels if any(marker in k.op_type for marker in _HEAVY)]
    assert heavy
    for kernel in heavy:
        assert kernel.nodes, f"{kernel.op_type} {kernel.runtime_node} maps to no exported node"
        assert set(kernel.nodes) <= exported
    # Real exporters' names: "/layer1/layer1.0/conv1/Conv" (TorchScript) or "node_Conv_12" (dynamo).
    assert any("/" in n or n.startswith("node_") for k in heavy for n in k.nodes)


def test_a_text_model_has_every_shape_after_the_token_type_expand() -> None:
    """Hugging Face BERT, input_ids only: the shapes come through the Shape/Gather/Expand arithmetic."""
    _, kernels = kernels_of("tiny_bert")
    gemms = [k for k in kernels if k.op_type in ("Gemm", "FusedGemm", "MatMul", "FusedMatMul")]
    assert gemms
    for kernel in gemms:
        assert all(s is not None and 32 in s for s in kernel.key.inputs), kernel.key  # 32 tokens
    assert any(k.op_type == "SkipLayerNormalization" for k in kernels)  # the runtime's transformer fusions ran


def test_batch_of_a_dynamic_axis_export_reaches_every_kernel() -> None:
    _, one = kernels_of("tiny_mobilenet_v2", batch=1)
    _, four = kernels_of("tiny_mobilenet_v2", batch=4)
    assert len(one) == len(four)
    for a, b in zip(one, four, strict=True):
        if a.key.outputs and a.key.outputs[0] and len(a.key.outputs[0]) == 4:
            assert b.key.outputs[0] == (4, *a.key.outputs[0][1:])


@pytest.mark.parametrize("name, op_type, bits", [
    ("tiny_mobilenet_v2_qdq", "QLinearConv", 8),
    ("tiny_bert_dynamic_int8", "DynamicQuantizeMatMul", 8),
    ("tiny_bert_int4", "MatMulNBits", 4),
])
def test_compressed_files_are_read_as_the_runtime_runs_them(name: str, op_type: str, bits: int) -> None:
    _, kernels = kernels_of(name)
    matching = [k for k in kernels if k.op_type == op_type]
    assert matching and all(k.key.bits == bits for k in matching)


def test_pruned_files_keep_their_pruned_channels_padded_to_the_block() -> None:
    """torch-pruning leaves channel counts the NCHWc layout pads; the key holds what the runtime runs."""
    model, _ = kernels_of("tiny_resnet18_prune88")
    kernels, seen = runtime_view(model)
    convs = [k for k in kernels if k.op_type == "NchwcConv"]
    assert convs
    block = nchwc_block_size(RUNTIME)
    assert any(k.key.weight[0] % block == 0 and k.key.weight[0] > 7 for k in convs)  # 7 channels kept: padded to 8
    for kernel in convs:
        assert list(kernel.key.outputs[0]) == seen[kernel.runtime_node][1][0]
        assert kernel.key.outputs[0][1] % block == 0


# ---------------------------------------------------------------------------------------------- external data
def test_external_data_is_read_from_beside_the_model(tmp_path: Path) -> None:
    for name in ("tiny_mobilenet_v2_dynamo.onnx", "tiny_mobilenet_v2_dynamo.onnx.data"):
        shutil.copy(REAL / name, tmp_path / name)
    model = load_model(tmp_path / "tiny_mobilenet_v2_dynamo.onnx")
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    assert extract_kernels(model, RUNTIME)


def test_a_model_without_its_data_file_says_which_file_it_needs(tmp_path: Path) -> None:
    shutil.copy(REAL / "tiny_mobilenet_v2_dynamo.onnx", tmp_path / "model.onnx")
    with pytest.raises(InvalidModelError, match="tiny_mobilenet_v2_dynamo.onnx.data.*beside the model"):
        load_model(tmp_path / "model.onnx")


def test_bytes_with_external_references_are_refused() -> None:
    with pytest.raises(InvalidModelError, match="external data"):
        load_model((REAL / "tiny_mobilenet_v2_dynamo.onnx").read_bytes())


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/hostname", "sub/../../x", "link.bin", "C:secret"])
def test_external_data_outside_the_models_folder_is_never_read(tmp_path: Path, location: str) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(16, dtype=np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "link.bin").symlink_to(secret)
    model = onnx.load(REAL / "tiny_bert.onnx")
    weight = next(init for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT)
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    del weight.external_data[:]
    weight.external_data.add(key="location", value=location)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidModelError) as caught:
        load_model(path)
    assert "beside the model" in str(caught.value)
