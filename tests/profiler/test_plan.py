"""The profiling plan: real exports first, every config of the space and the users' own quantizer, then random
variants at other batch sizes, input sizes and sequence lengths."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from predictor.compression.config import parse_config
from predictor.kernels.keys import extract_kernels
from predictor.model.graph import set_input_shapes
from predictor.runtime.optimizer import local_runtime
from profiler.plan import DEFAULT_PRIORS_DIR, default_plan, model_plan, prior_index, resizable_priors
from profiler.skeleton import load_skeleton, materialize_skeleton
from tests import factories


def test_priors_are_real_exports_and_come_first_then_sparsity_then_random() -> None:
    entries = prior_index()
    assert {e["exporter"] for e in entries} == {"torchscript", "dynamo"}
    assert {e["family"] for e in entries} == {"cnn", "vit", "text"}
    items = list(itertools.islice(default_plan(), 600))
    stages = [item.stage for item in items]
    first_random = stages.index("random")
    assert stages[:first_random] == sorted(stages[:first_random], key=["priors", "sparsity"].index)
    assert [item.prior_file for item in items[: len(entries)]] == [e["file"] for e in entries]
    assert all(item.config.is_identity and not item.tool for item in items[: len(entries)])
    assert len({item.item_id for item in items}) == len(items)


def test_priors_are_profiled_as_users_quantizers_leave_them() -> None:
    items = list(itertools.islice(default_plan(), 400))
    tools = [item for item in items if item.tool]
    assert tools and all(item.tool == "quantize_static" for item in tools)
    by_stage = Counter(item.label.split("/", 1)[1] for item in items if item.stage == "priors")
    text = sum(1 for e in prior_index() if e["family"] == "text")
    assert by_stage["dynamic_int8"] >= text and by_stage["int4"] >= text


def test_random_variants_vary_batch_and_size_of_resizable_priors_only() -> None:
    resizable = resizable_priors()
    assert "resnet18.json" in resizable and "vit_b_16.json" not in resizable
    randoms = [item for item in itertools.islice(default_plan(), 900) if item.stage == "random"][:60]
    assert randoms
    entries = {e["file"]: e for e in prior_index()}
    for item in randoms:
        entry = entries[item.prior_file]
        if item.prior_file not in resizable:
            assert (item.batch, item.size) == (entry["batch"], entry["size"])
    assert any(item.batch and item.batch > 1 for item in randoms)


def test_cnn_priors_run_in_float_at_batch_2_4_and_8_right_after_the_float_pass() -> None:
    entries = prior_index()
    resizable = resizable_priors()
    resizable_cnns = [e["file"] for e in entries if e["family"] == "cnn" and e["file"] in resizable]
    items = list(itertools.islice(default_plan(), len(entries) + 3 * len(resizable_cnns)))[len(entries):]
    assert all(item.config.is_identity and not item.tool and item.stage == "priors" for item in items)
    assert [item.prior_file for item in items] == resizable_cnns * 3
    assert [item.batch for item in items[:len(resizable_cnns)]] == [4] * len(resizable_cnns)
    assert {item.batch for item in items} == {2, 4, 8}
    batched = items[1]
    dims = [d.dim_value for d in batched.model().graph.input[0].type.tensor_type.shape.dim]
    assert dims == [batched.batch, 3, batched.size, batched.size]


@pytest.mark.parametrize("name", ["resnet18.json", "bert_small_dynamo.json"])
def test_a_skeleton_materializes_the_export_the_runtime_runs(name: str) -> None:
    skeleton = load_skeleton(DEFAULT_PRIORS_DIR / name)
    model = materialize_skeleton(skeleton)
    assert [n.name for n in model.graph.node] == [n["name"] for n in skeleton["nodes"]]
    kernels = extract_kernels(set_input_shapes(model), local_runtime(1))
    assert all(s is not None for k in kernels for s in (*k.key.inputs, *k.key.outputs))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {a.name: np.zeros(a.shape, np.int64) if "int64" in a.type
             else np.random.default_rng(0).standard_normal(a.shape).astype(np.float32) for a in session.get_inputs()}
    assert session.run(None, feeds)


def test_a_resized_prior_runs_at_its_new_shape() -> None:
    entry = next(e for e in prior_index() if e["file"] == "resnet18.json")
    item = next(item for item in itertools.islice(default_plan(), 2000)
                if item.prior_file == entry["file"] and item.stage == "random" and item.size != entry["size"])
    model = item.model()
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [item.batch, 3, item.size, item.size]


def test_a_tool_item_is_what_quantize_static_writes() -> None:
    item = next(i for i in itertools.islice(default_plan(), 400) if i.tool and i.prior_file == "mobilenet_v2.json")
    model = item.model()
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"]
    assert isinstance(model, onnx.ModelProto)


def test_model_plan_is_the_model_and_its_configs() -> None:
    configs = [("noop", parse_config({})), ("int8", parse_config({"default": {"bits": 8}}))]
    items = model_plan(factories.gemm_model(), "fc", configs)
    assert [item.label for item in items] == ["fc/fp32", "fc/int8"]
