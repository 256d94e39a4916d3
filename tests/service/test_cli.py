"""The `latpred` CLI contract: one-line errors with exit 2, --json prints only JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from tests import factories


def run_cli(*args: str, home: Path, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")}
    env["LATPRED_HOME"] = str(home)
    if database_url:
        env["LATPRED_DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def assert_usage_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fragment in lines[0]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "block.onnx"
    onnx.save(factories.residual_model(), path)
    return path


@pytest.fixture
def registered_device(tmp_path: Path) -> str:
    from predictor.runtime.optimizer import describe_host, local_runtime
    from predictor.store import (
        create_store_engine,
        register_device,
        session_factory,
        session_scope,
        upgrade_schema,
    )

    engine = create_store_engine(f"sqlite:///{tmp_path / 'home' / 'latpred.db'}")
    upgrade_schema(engine)
    runtime = local_runtime(1)
    with session_scope(session_factory(engine)) as session:
        register_device(session, name="cpu-1t", backend=runtime.backend, execution_provider=runtime.execution_provider,
                      runtime_version=runtime.runtime_version, threads=1, host=describe_host())
    engine.dispose()
    return "cpu-1t"


def test_devices_on_an_empty_store(tmp_path: Path) -> None:
    result = run_cli("devices", "--json", home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"devices": []}


def test_predict_prints_kernels_then_says_no_measurements(tmp_path: Path, model_file: Path,
                                                            registered_device: str) -> None:
    result = run_cli("predict", str(model_file), "--device", registered_device, home=tmp_path / "home")
    assert_usage_error(result, f"no measurements for device {registered_device}")
    assert "conv_a" in result.stdout and "conv_b" in result.stdout
    assert "kernels on onnxruntime" in result.stdout


def test_predict_unknown_device(tmp_path: Path, model_file: Path) -> None:
    assert_usage_error(run_cli("predict", str(model_file), "--device", "nope", home=tmp_path / "home"),
                       "unknown device 'nope'")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"definitely not onnx", "not an ONNX model"),
        (b"", "empty file"),
    ],
)
def test_predict_bad_files(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    assert_usage_error(run_cli("predict", str(path), "--device", "any", home=tmp_path / "home"), fragment)


def test_predict_truncated_and_bitflipped(tmp_path: Path, model_file: Path) -> None:
    data = model_file.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    assert_usage_error(run_cli("predict", str(truncated), "--device", "any", home=tmp_path / "home"),
                       "truncated/corrupted")


def test_predict_opset_the_runtime_cannot_load(tmp_path: Path, registered_device: str) -> None:
    model = factories.gemm_model()
    model.opset_import[0].version = 999
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())
    result = run_cli("predict", str(path), "--device", registered_device, home=tmp_path / "home")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "opset" in result.stderr.lower() or "invalid onnx model" in result.stderr.lower()


def test_symbolic_shapes_need_input_shape(tmp_path: Path, registered_device: str) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(factories.symbolic_batch_model(), path)
    home = tmp_path / "home"
    assert_usage_error(run_cli("predict", str(path), "--device", registered_device, home=home), "--input-shape")
    fixed = run_cli("predict", str(path), "--device", registered_device, "--input-shape", "input=4x16", home=home)
    assert "4x16" in fixed.stdout
    assert_usage_error(fixed, "no measurements")


def test_missing_option_value_is_one_line(tmp_path: Path) -> None:
    assert_usage_error(run_cli("predict", "--device", home=tmp_path / "home"), "--device")


def test_unreachable_database_is_one_line(tmp_path: Path, model_file: Path) -> None:
    result = run_cli("devices", home=tmp_path / "home",
                     database_url="postgresql://nobody@127.0.0.1:1/none")
    assert_usage_error(result, "cannot connect to database")


def test_profile_without_refinement_profiles_the_priors_and_no_refinement(tmp_path: Path) -> None:
    """`--no-refinement`: the default plan with random variants after the priors, and no refinement report."""
    result = run_cli("profile", "--device", "cpu", "--budget-minutes", "0.05", "--no-refinement", "--json",
                     home=tmp_path / "home")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["items_done"]) >= 1
    assert report["refinement"] is None  # with refinement on, one item done already reports it (test_runner)


@pytest.fixture(scope="module")
def profiled_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A home whose device `cpu` has profiled a small model and two configs, and trained."""
    base = tmp_path_factory.mktemp("profiled")
    home = base / "home"
    model_path = base / "block.onnx"
    onnx.save(factories.residual_model(channels=32, size=28), model_path)
    configs = base / "configs.json"
    configs.write_text(json.dumps([{"name": "int8", "config": {"default": {"bits": 8}}},
                                   {"name": "prune50", "config": {"default": {"prune_ratio": 0.5}}}]))
    result = run_cli("profile", "--device", "cpu", "--for-model", str(model_path), "--configs", str(configs),
                     "--budget-minutes", "5", home=home)
    assert result.returncode == 0, result.stderr
    assert "models profiled" in result.stdout
    trained = run_cli("train", "--device", "cpu", home=home)
    assert trained.returncode == 0, trained.stderr
    assert "NchwcConv" in trained.stdout or "FusedConv" in trained.stdout or "Conv" in trained.stdout
    return home, model_path, configs


def test_profile_predict_rank_measure_validate(profiled_home: tuple[Path, Path, Path]) -> None:
    home, model_path, configs = profiled_home
    predicted = run_cli("predict", str(model_path), "--device", "cpu", "--json", home=home)
    assert predicted.returncode == 0, predicted.stderr
    document = json.loads(predicted.stdout)
    assert set(document) >= {"latency_ms", "interval_ms", "table_hit_rate", "kernels"}
    assert document["table_hit_rate"] == 1.0  # the profiled model itself: every kernel is in the table
    assert document["interval_ms"][0] <= document["latency_ms"] <= document["interval_ms"][1]
    assert all(k["latency_ms"] > 0 and k["source"] == "table" for k in document["kernels"])
    kernel_sum = sum(k["latency_ms"] for k in document["kernels"])
    assert document["latency_ms"] == pytest.approx(kernel_sum * 1.0 + document["overhead_ms"], rel=0.3)

    ranked = run_cli("rank", str(model_path), "--device", "cpu", "--configs", str(configs), "--target-speedup",
                     "1.2", "--json", home=home)
    assert ranked.returncode == 0, ranked.stderr
    ranking = json.loads(ranked.stdout)
    latencies = [r["latency_ms"] for r in ranking["ranked"]]
    assert latencies == sorted(latencies) and {r["name"] for r in ranking["ranked"]} == {"int8", "prune50"}
    for row in ranking["ranked"]:
        assert row["speedup"] == pytest.approx(ranking["baseline_ms"] / row["latency_ms"])
        assert row["meets_target"] == (row["speedup"] >= 1.2)

    measured = run_cli("measure", str(model_path), "--device", "cpu", "--json", home=home)
    assert measured.returncode == 0, measured.stderr
    measurement = json.loads(measured.stdout)
    assert measurement["measured_ms"] > 0
    # One meaning of latency: the prediction is in the device's baseline state, and the measurement says what it
    # comes to in that state (scaled by the reference kernel's time now against then).
    baseline = document["baseline_reference_ms"][measurement["reference"]]
    assert measurement["baseline_reference_ms"] == baseline
    assert measurement["scaled_ms"] == pytest.approx(
        measurement["measured_ms"] * baseline / measurement["reference_ms"])
    text = run_cli("predict", str(model_path), "--device", "cpu", home=home)
    assert "baseline state" in text.stdout

    validated = run_cli("validate", str(model_path), "--device", "cpu", "--configs", str(configs), "--json",
                        home=home)
    assert validated.returncode == 0, validated.stderr
    result = json.loads(validated.stdout)
    assert len(result["rows"]) == 3 and result["summary"]["count"] == 3
    assert all(row["measured_ms"] > 0 and row["predicted_ms"] > 0 for row in result["rows"])


def test_malformed_config_and_candidates(profiled_home: tuple[Path, Path, Path], tmp_path: Path) -> None:
    home, model_path, _ = profiled_home
    bad = tmp_path / "bad.json"
    bad.write_text('{"default": {"bits": 3}}')
    assert_usage_error(run_cli("predict", str(model_path), "--device", "cpu", "--config", str(bad), home=home),
                       "default.bits")
    bad.write_text("{broken")
    assert_usage_error(run_cli("rank", str(model_path), "--device", "cpu", "--configs", str(bad), home=home),
                       "not valid JSON")
    bad.write_text('{"layers": {"no_such_layer*": {"bits": 8}}}')
    assert_usage_error(run_cli("predict", str(model_path), "--device", "cpu", "--config", str(bad), home=home),
                       "matches no node")
