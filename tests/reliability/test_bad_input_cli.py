"""Bad input through the `latpred` CLI that tests/service/test_cli.py does not cover: exit 2, one line, no traceback.

Bit-flipped models, ops the runtime does not have (unknown default-domain op, custom domain), compression
configs with out-of-range values for `predict --config` and `rank --configs`, control flow (If, Loop), and
external data named outside the model's folder.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import helper

from predictor.errors import LatpredError
from predictor.model.graph import load_model
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.store import create_store_engine, register_device, session_factory, session_scope, upgrade_schema
from tests import factories
from tests.reliability.hostile_models import external_data_model, if_model, loop_model
from tests.service.test_cli import assert_usage_error, run_cli

DEVICE = "cli-cpu"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home whose store has the device `cli-cpu` (this host's onnxruntime, 1 thread), without measurements."""
    home = tmp_path / "home"
    engine = create_store_engine(f"sqlite:///{home / 'latpred.db'}")
    upgrade_schema(engine)
    runtime = local_runtime(1)
    with session_scope(session_factory(engine)) as session:
        register_device(session, name=DEVICE, backend=runtime.backend, execution_provider=runtime.execution_provider,
                      runtime_version=runtime.runtime_version, threads=1, host=describe_host())
    engine.dispose()
    return home


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    onnx.save(factories.residual_model(channels=8, size=8), path)
    return path


def _bit_flipped_rejects(data: bytes, count: int, seed: int = 7) -> list[bytes]:
    """Copies of `data` with one flipped bit each, chosen (deterministically) among those the loader rejects."""
    rng = random.Random(seed)
    rejected: list[bytes] = []
    while len(rejected) < count:
        flipped = bytearray(data)
        flipped[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        try:
            load_model(bytes(flipped))
        except LatpredError:
            rejected.append(bytes(flipped))
    return rejected


def test_bit_flipped_models_are_one_line_errors(tmp_path: Path, model_file: Path, home: Path) -> None:
    for index, data in enumerate(_bit_flipped_rejects(model_file.read_bytes(), count=3)):
        path = tmp_path / f"flipped-{index}.onnx"
        path.write_bytes(data)
        result = run_cli("predict", str(path), "--device", DEVICE, home=home)
        assert_usage_error(result, str(path))
        assert "ONNX" in result.stderr, result.stderr
        assert result.stdout == "", "nothing may be printed for a model that failed to load"


def _with_op(op_type: str, domain: str = "") -> onnx.ModelProto:
    """A Relu model whose only node is replaced by `op_type` in `domain`."""
    node = helper.make_node(op_type, ["input"], ["output"], name="weird", domain=domain)
    graph = helper.make_graph([node], "weird-op", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                                 [1, 8])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 8])])
    opsets = [helper.make_opsetid("", factories.OPSET)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = factories.IR_VERSION
    return model


@pytest.mark.parametrize(
    ("op_type", "domain"),
    [("NotAnOp", ""), ("FancyAttention", "com.example.custom")],
    ids=["unknown-default-domain-op", "custom-domain-op"],
)
@pytest.mark.parametrize("command", ["predict", "profile"])
def test_ops_the_runtime_does_not_have_are_named(tmp_path: Path, home: Path, op_type: str, domain: str,
                                                 command: str) -> None:
    path = tmp_path / f"{op_type}.onnx"
    path.write_bytes(_with_op(op_type, domain).SerializeToString())
    args = [str(path)] if command == "predict" else ["--for-model", str(path), "--budget-minutes", "0.1"]
    result = run_cli(command, *args, "--device", DEVICE, home=home)
    assert_usage_error(result, op_type)
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"default": {"sparsity": 1.5}}, "default.sparsity"),
        ({"default": {"prune_ratio": -0.1}}, "default.prune_ratio"),
        ({"layers": {"conv_a": {"round_to": 0}}}, "layers.conv_a.round_to"),
        ({"default": {"bits": 8, "sparsity_pattern": "3:7"}}, "default.sparsity_pattern"),
        ({"default": {"sparsity": "NaN"}}, "default.sparsity"),
        ({"default": {"bits": 8}, "unknown": 1}, "unknown"),
        ([{"default": {"bits": 8}}], "config"),
    ],
    ids=["sparsity>1", "negative-prune", "round_to-0", "bad-pattern", "nan-sparsity", "extra-field", "not-object"],
)
def test_predict_config_out_of_range(tmp_path: Path, model_file: Path, home: Path, config: Any,
                                     fragment: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    result = run_cli("predict", str(model_file), "--device", DEVICE, "--config", str(path), home=home)
    assert_usage_error(result, fragment)
    assert result.stdout == ""


# A candidates file that is not a list of named candidates fails as a whole. A candidate whose config is out of
# range is named and the others ranked: tests/service/test_cli_rank_validate.py (it needs a device with a table).
@pytest.mark.parametrize(
    ("candidates", "fragment"),
    [
        ([], "non-empty list"),
        ([{"config": {}}], "candidate 0 needs a \"name\""),
    ],
    ids=["empty", "no-name"],
)
def test_rank_refuses_a_malformed_candidates_file(tmp_path: Path, model_file: Path, home: Path, candidates: Any,
                                   fragment: str) -> None:
    path = tmp_path / "candidates.json"
    path.write_text(json.dumps(candidates))
    result = run_cli("rank", str(model_file), "--device", DEVICE, "--configs", str(path), home=home)
    assert_usage_error(result, fragment)
    assert result.stdout == ""


def test_execution_provider_missing_here_is_named(home: Path) -> None:
    result = run_cli("profile", "--device", "gpu", "--execution-provider", "CUDAExecutionProvider",
                     "--budget-minutes", "0.1", home=home)
    assert_usage_error(result, "CUDAExecutionProvider is not available here")
    assert result.stdout == ""


@pytest.mark.parametrize("model", [if_model(), loop_model()], ids=["if", "loop"])
def test_control_flow_models_are_handled(tmp_path: Path, home: Path, model: onnx.ModelProto) -> None:
    """Graph attributes (If, Loop): the kernels are listed, then the one-line refusal of a device without a table
    (exit 2, never the internal error's exit 1)."""
    path = tmp_path / "control_flow.onnx"
    path.write_bytes(model.SerializeToString())
    result = run_cli("predict", str(path), "--device", DEVICE, home=home)
    assert_usage_error(result, f"no measurements for device {DEVICE}")
    assert any(op in result.stdout for op in ("If", "Loop"))


def test_external_data_is_read_only_beside_the_model(tmp_path: Path, home: Path) -> None:
    """A location outside the model's folder is refused in one line, and nothing of that file is shown; a file
    beside the model is read."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"S3CR3T-BYTES-" * 8)
    folder = tmp_path / "models"
    folder.mkdir()
    outside = folder / "outside.onnx"
    outside.write_bytes(external_data_model("../secret.bin"))
    result = run_cli("predict", str(outside), "--device", DEVICE, home=home)
    assert_usage_error(result, "only a file beside the model (a plain file name) is read")
    assert "S3CR3T" not in result.stdout + result.stderr and result.stdout == ""
    (folder / "weights.bin").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    beside = folder / "beside.onnx"
    beside.write_bytes(external_data_model("weights.bin"))
    result = run_cli("predict", str(beside), "--device", DEVICE, home=home)
    assert_usage_error(result, f"no measurements for device {DEVICE}")
    assert "Gemm" in result.stdout
