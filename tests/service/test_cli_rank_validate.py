"""`latpred rank` and `latpred validate`: the path REST ranks with by default, and going on past failures."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from fastapi.testclient import TestClient

from predictor.compression.config import parse_config
from predictor.estimation.prepared import PreparedModel
from service.app import create_app
from service.settings import Settings
from tests import factories
from tests.service.cli_runs import CliRun, assert_one_line_error, run_latpred, seed_device

pytestmark = pytest.mark.usefixtures("cli_home")

TOKEN = "cli-t0ken"
GOOD = {"int8": {"default": {"bits": 8}}, "prune50": {"default": {"prune_ratio": 0.5}}}
BAD = {"three-bits": {"default": {"bits": 3}}, "typo": {"layers": {"no_such_layer*": {"bits": 8}}}}






@pytest.fixture
def device(cli_home: Path) -> str:
    configs = [parse_config(config) for config in GOOD.values()]
    return seed_device(cli_home, factories.residual_model(), configs=configs)


def write_json(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def latencies(run: CliRun) -> dict[str, float]:
    return {row["name"]: row["latency_ms"] for row in json.loads(run.stdout)["ranked"]}


def test_rank_answers_as_rest_does_by_default(capsys: pytest.CaptureFixture[str], cli_home: Path, tmp_path: Path,
                                              residual_file: Path, device: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    configs = write_json(tmp_path / "configs.json", GOOD)
    fast_calls: list[object] = []
    learned = PreparedModel.fast_keys

    def counted(self: PreparedModel, config: Any) -> Any:
        fast_calls.append(config)
        return learned(self, config)

    monkeypatch.setattr(PreparedModel, "fast_keys", counted)
    by_default = run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(configs),
                             "--json")
    assert by_default.status == 0, by_default
    assert len(fast_calls) == 2  # one learned-transformation lookup per candidate: the fast path
    fast_calls.clear()
    exact = run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(configs), "--json",
                        "--exact")
    assert exact.status == 0, exact
    assert fast_calls == []  # each candidate compressed and optimized for real

    settings = Settings(home=cli_home, api_tokens=TOKEN)
    with TestClient(create_app(settings)) as api:
        uploaded = api.post("/api/models", files={"file": ("block.onnx", residual_file.read_bytes())},
                            headers={"Authorization": f"Bearer {TOKEN}"})
        assert uploaded.status_code == 201, uploaded.text
        answer = api.post("/api/rank", json={"device": device, "model_id": uploaded.json()["id"],
                                             "candidates": [{"name": n, "config": c} for n, c in GOOD.items()]})
        assert answer.status_code == 200, answer.text
    rest = {row["name"]: row["latency_ms"] for row in answer.json()["ranked"]}
    assert latencies(by_default) == pytest.approx(rest, rel=1e-9)
    assert set(latencies(exact)) == set(rest)


def test_rank_goes_on_past_failing_candidates(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                              residual_file: Path, device: str) -> None:
    configs = write_json(tmp_path / "configs.json", {**BAD, **GOOD})
    run = run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(configs), "--json")
    assert run.status == 2
    document = json.loads(run.stdout)
    assert set(latencies(run)) == set(GOOD)
    assert [failure["name"] for failure in document["failed"]] == list(BAD)
    errors = [line for line in run.error_lines if line.startswith("latpred: error: ")]
    assert len(errors) == 2 and "'three-bits'" in errors[0] and "'typo'" in errors[1]
    assert "default.bits" in errors[0] and "no_such_layer*" in errors[1]
    assert "Traceback" not in run.stderr

    text = run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(configs))
    assert text.status == 2
    assert all(name in text.stdout for name in GOOD) and not any(name in text.stdout for name in BAD)


def test_rank_with_every_candidate_failing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           residual_file: Path, device: str) -> None:
    configs = write_json(tmp_path / "configs.json", BAD)
    run = run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(configs), "--json")
    assert run.status == 2 and json.loads(run.stdout)["ranked"] == []
    broken = write_json(tmp_path / "broken.json", [{"config": {}}])
    assert_one_line_error(run_latpred(capsys, "rank", str(residual_file), "--device", device, "--configs", str(broken)),
                          2, "candidate 0 needs a \"name\"")


def test_validate_takes_per_model_candidates_and_goes_on_past_failures(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, residual_file: Path, device: str) -> None:
    gemm = tmp_path / "fc.onnx"
    onnx.save(factories.gemm_model(), gemm)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    shared = write_json(tmp_path / "shared.json", {"int8": GOOD["int8"]})
    own = write_json(tmp_path / "fc-configs.json", {"fp16": {"default": {"bits": 16}}, **BAD})
    run = run_latpred(capsys, "validate", str(residual_file), f"{gemm}:{own}", str(broken), "--device", device,
                      "--configs", str(shared), "--json")
    assert run.status == 2, run
    document = json.loads(run.stdout)
    assert [(row["model"], row["config"]) for row in document["rows"]] == [
        ("block", "baseline"), ("block", "int8"), ("fc", "baseline"), ("fc", "fp16")]
    assert all(row["measured_ms"] > 0 and row["predicted_ms"] > 0 for row in document["rows"])
    assert document["summary"]["count"] == 4
    assert [(f["model"], f["config"]) for f in document["failed"]] == [
        ("broken", None), ("fc", "three-bits"), ("fc", "typo")]
    errors = [line for line in run.error_lines if line.startswith("latpred: error: ")]
    assert len(errors) == 3
    assert "model 'broken' failed" in errors[0] and "not an ONNX model" in errors[0]
    assert "model 'fc', config 'three-bits' failed" in errors[1]


def test_validate_fixes_symbolic_inputs(capsys: pytest.CaptureFixture[str], tmp_path: Path, residual_file: Path,
                                        device: str) -> None:
    symbolic = tmp_path / "dynamic.onnx"
    onnx.save(factories.symbolic_batch_model(), symbolic)
    needs_shape = run_latpred(capsys, "validate", str(symbolic), "--device", device, "--json")
    assert needs_shape.status == 2 and "--input-shape" in needs_shape.stderr
    # The shape fixes the model whose input is symbolic; the residual block keeps its own fixed input.
    run = run_latpred(capsys, "validate", str(symbolic), str(residual_file), "--device", device, "--input-shape",
                      "input=4x16", "--json")
    assert run.status == 0, run
    assert [row["model"] for row in json.loads(run.stdout)["rows"]] == ["dynamic", "block"]
    typo = run_latpred(capsys, "validate", str(symbolic), "--device", device, "--input-shape", "inptu=4x16")
    assert_one_line_error(typo, 2, "--input-shape names inptu, an input of none of the models")
