"""The Python API (`from predictor import Predictor`): the issue's snippet, locally on a store holding a device
profiled with real onnxruntime measurements and against a real `latpred serve` on that store, with the same answers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from predictor.client import LatpredClient
from predictor.compression.config import parse_config
from predictor.errors import (
    ConfigError,
    InvalidModelError,
    LatpredError,
    NoMeasurementsError,
    ServiceHTTPError,
    UnknownDeviceError,
)
from predictor.estimation.results import Estimate, RankedCandidate, Ranking
from predictor.kernels.keys import extract_kernels
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.settings import StoreSettings
from predictor.store import (
    MeasurementIn,
    add_measurements,
    get_device,
    lookup_table,
    open_store,
    register_device,
    session_scope,
    start_run,
)
from tests import factories
from tests.predictor.conftest import CANDIDATES, PROFILED_DEVICE, SERVICE_TOKEN, ProfiledStore, device_fields


@pytest.fixture
def in_model_folder(profiled_store: ProfiledStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory holds the profiled model as model.onnx; LATPRED_HOME names the profiled store."""
    (tmp_path / "model.onnx").write_bytes(profiled_store.model_bytes)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATPRED_HOME", str(profiled_store.home))
    return tmp_path


def stored_table(profiled_store: ProfiledStore, device: str = PROFILED_DEVICE) -> dict[str, float]:
    store = open_store(StoreSettings(database_url=profiled_store.database_url))
    try:
        with store.sessions() as session:
            return lookup_table(session, get_device(session, device))
    finally:
        store.close()


def check_snippet_answers(e: Estimate, ranked: Ranking, table: dict[str, float]) -> None:
    """What the snippet promises, in numbers: the int8 model's kernels were all measured, so its estimate is their
    measured medians summed; the ranking is fastest first with speedups over the uncompressed model."""
    assert e.device == PROFILED_DEVICE
    assert e.table_hit_rate == 1.0 and e.reliable and e.sources == {"table": len(e.kernels)}
    assert [k.latency_ms for k in e.kernels] == pytest.approx([table[k.key_hash] for k in e.kernels])
    assert e.latency_ms == pytest.approx(sum(k.latency_ms for k in e.kernels) + e.overhead_ms)
    assert e.interval_ms[0] < e.latency_ms < e.interval_ms[1]
    assert any(k.op_type.startswith("QLinear") for k in e.kernels)  # an int8 model's kernels indeed
    assert isinstance(ranked, Ranking) and all(isinstance(c, RankedCandidate) for c in ranked)
    assert sorted(c.name for c in ranked) == ["int8", "p30"]
    assert [c.latency_ms for c in ranked] == sorted(c.latency_ms for c in ranked)
    # Whether int8 wins depends on the CPU (on a Zen 2 without VNNI this block runs no faster in int8): the ranking
    # follows the table, whichever way it goes.
    assert ranked.by_name("int8").table_hit_rate == 1.0 and ranked.by_name("int8").reliable
    for candidate in ranked:
        assert candidate.speedup == pytest.approx(ranked.baseline_ms / candidate.latency_ms)
        assert candidate.meets_target is None
    assert [ranked.by_name(c.name) for c in ranked] == list(ranked)


def test_the_snippet_locally(in_model_folder: Path, profiled_store: ProfiledStore) -> None:
    from predictor import Predictor

    p = Predictor("my-device")  # the local store (LATPRED_DATABASE_URL / LATPRED_HOME)
    e = p.predict("model.onnx", {"default": {"bits": 8}})  # e.latency_ms, e.interval_ms, e.kernels
    ranked = p.rank("model.onnx", {"int8": CANDIDATES["int8"], "p30": CANDIDATES["p30"]})  # fastest first
    check_snippet_answers(e, ranked, stored_table(profiled_store))
    # The ranking's baseline is the uncompressed model's prediction, and ranking exactly (each candidate compressed
    # and optimized for real) gives each candidate the estimate predict gives it.
    assert ranked.baseline_ms == pytest.approx(p.predict("model.onnx").latency_ms)
    exact = p.rank("model.onnx", CANDIDATES, exact=True)
    assert exact.by_name("int8").latency_ms == pytest.approx(e.latency_ms)
    assert exact.by_name("p30").latency_ms == pytest.approx(p.predict("model.onnx", CANDIDATES["p30"]).latency_ms)
    p.close()


def test_the_snippet_against_a_served_instance(in_model_folder: Path, profiled_store: ProfiledStore,
                                               served: str) -> None:
    from predictor import Predictor

    p = Predictor("my-device", url=served, token=SERVICE_TOKEN)  # or a latpred service, same interface
    e = p.predict("model.onnx", {"default": {"bits": 8}})
    ranked = p.rank("model.onnx", {"int8": CANDIDATES["int8"], "p30": CANDIDATES["p30"]})
    check_snippet_answers(e, ranked, stored_table(profiled_store))
    # The same questions asked of the same store locally get the same answers.
    with Predictor("my-device") as local:
        assert e.to_dict() == local.predict("model.onnx", {"default": {"bits": 8}}).to_dict()
        assert ranked.to_dict() == local.rank("model.onnx", CANDIDATES).to_dict()
    with pytest.raises(LatpredError, match="kernel level"):
        p.rank("model.onnx", CANDIDATES, exact=True)
    p.close()


def test_models_and_configs_in_every_form_get_one_answer(in_model_folder: Path, tmp_path: Path) -> None:
    from predictor import CompressionConfig, Predictor

    config_path = tmp_path / "int8.json"
    config_path.write_text(json.dumps(CANDIDATES["int8"]))
    with Predictor(PROFILED_DEVICE) as p:
        expected = p.predict("model.onnx", CANDIDATES["int8"]).to_dict()
        model_path = Path("model.onnx")
        for model in (model_path, str(model_path.resolve()), model_path.read_bytes(), onnx.load(model_path)):
            for config in (CANDIDATES["int8"], config_path, str(config_path), parse_config(CANDIDATES["int8"]),
                           CompressionConfig.model_validate(CANDIDATES["int8"])):
                assert p.predict(model, config).to_dict() == expected
        assert p.rank(model_path, [("int8", config_path), ("p30", CANDIDATES["p30"])]).to_dict() == \
            p.rank(model_path, CANDIDATES).to_dict()


def test_results_are_typed_and_round_trip_through_json(in_model_folder: Path) -> None:
    from predictor import Predictor

    with Predictor(PROFILED_DEVICE) as p:
        estimate = p.predict("model.onnx", CANDIDATES["p30"])
        ranked = p.rank("model.onnx", CANDIDATES, target_speedup=2.0)
    again = Estimate.from_dict(json.loads(estimate.to_json()))
    assert again.to_dict() == estimate.to_dict()
    assert [k.key_hash for k in again.kernels] == [k.key_hash for k in estimate.kernels]
    assert again.kernels[0].key is None and estimate.kernels[0].key is not None  # JSON carries the hash only
    assert any("prune_ratio leaves" in warning for warning in estimate.warnings)  # conv_b feeds the residual add
    assert Ranking.from_dict(json.loads(ranked.to_json())) == ranked
    assert ranked.target_speedup == 2.0
    assert [c.meets_target for c in ranked] == [c.speedup >= 2.0 for c in ranked]
    assert len(ranked) == 2 and list(ranked) == list(ranked.candidates) and ranked[-1] is ranked.candidates[1]
    assert json.loads(ranked.to_json())["ranked"][0]["name"] == ranked[0].name


def test_a_long_lived_predictor_sees_new_measurements(profiled_store: ProfiledStore) -> None:
    """A Predictor kept open takes in what was profiled since it was made (DevicePredictor.updated)."""
    from predictor import Predictor

    runtime = local_runtime(1)
    gemm = factories.gemm_model(k=128, n=64)
    block = factories.residual_model(channels=8, size=8)
    store = open_store(StoreSettings(database_url=profiled_store.database_url))
    try:
        with session_scope(store.sessions) as session:
            device = register_device(session, name="growing-device", backend=runtime.backend,
                                     execution_provider=runtime.execution_provider,
                                     runtime_version=runtime.runtime_version, threads=1, host=describe_host())
            start_run(session, device, "growing-1", None)
            add_measurements(session, device, "growing-1", rows_of(extract_kernels(block, runtime), 0.01))
        with Predictor("growing-device", database_url=profiled_store.database_url) as p:
            assert p.predict(block.SerializeToString()).table_hit_rate == 1.0
            before = p.predict(gemm.SerializeToString())
            assert before.table_hit_rate == 0.0
            with session_scope(store.sessions) as session:
                device = get_device(session, "growing-device")
                start_run(session, device, "growing-2", None)
                add_measurements(session, device, "growing-2", rows_of(extract_kernels(gemm, runtime), 0.5))
            after = p.predict(gemm.SerializeToString())
        assert after.table_hit_rate == 1.0
        assert after.latency_ms == pytest.approx(0.5 * len(after.kernels) + after.overhead_ms)
        assert after.latency_ms != pytest.approx(before.latency_ms)
    finally:
        store.close()


def rows_of(kernels: list, median_ms: float) -> list[MeasurementIn]:  # type: ignore[type-arg]
    return [MeasurementIn(key=k.key.to_dict(), key_hash=k.key.key_hash, op_type=k.op_type, bits=k.key.bits,
                          median_ms=median_ms, p10_ms=median_ms * 0.9, p90_ms=median_ms * 1.1, repeats=10)
            for k in kernels]


def test_errors_say_what_is_wrong(in_model_folder: Path, profiled_store: ProfiledStore, tmp_path: Path) -> None:
    from predictor import Predictor

    with pytest.raises(UnknownDeviceError, match=r"unknown device 'nope'; known: .*'my-device'"):
        Predictor("nope")
    with Predictor(PROFILED_DEVICE) as p:
        with pytest.raises(InvalidModelError, match="no such file"):
            p.predict("missing.onnx")
        (tmp_path / "junk.onnx").write_bytes(b"not a model")
        with pytest.raises(InvalidModelError, match="not an ONNX model"):
            p.predict(tmp_path / "junk.onnx")
        with pytest.raises(ConfigError, match="invalid compression config at default.bits"):
            p.predict("model.onnx", {"default": {"bits": 7}})
        with pytest.raises(ConfigError, match="cannot read config"):
            p.predict("model.onnx", tmp_path / "missing.json")
        with pytest.raises(ConfigError, match="candidate 'bad': invalid compression config at default.prune_ratio"):
            p.rank("model.onnx", {"int8": CANDIDATES["int8"], "bad": {"default": {"prune_ratio": 2}}})
        with pytest.raises(ConfigError, match="no candidates"):
            p.rank("model.onnx", {})
    runtime = local_runtime(1)
    store = open_store(StoreSettings(database_url=profiled_store.database_url))
    try:
        with session_scope(store.sessions) as session:
            register_device(session, name="empty-device", backend=runtime.backend,
                            execution_provider=runtime.execution_provider, runtime_version=runtime.runtime_version,
                            threads=1, host=describe_host())
    finally:
        store.close()
    with Predictor("empty-device") as empty, pytest.raises(NoMeasurementsError, match="latpred profile"):
        empty.predict("model.onnx")


def test_errors_against_a_served_instance(in_model_folder: Path, served: str) -> None:
    from predictor import Predictor

    with pytest.raises(UnknownDeviceError, match="unknown device 'nope'"):
        Predictor("nope", url=served, token=SERVICE_TOKEN)
    with Predictor(PROFILED_DEVICE, url=served, token=SERVICE_TOKEN) as p:
        with pytest.raises(InvalidModelError, match="no such file"):  # checked here, before any upload
            p.predict("missing.onnx")
        with pytest.raises(ConfigError, match="candidate 'bad'"):
            p.rank("model.onnx", {"bad": {"default": {"bits": 7}}})
        # A model whose input has a symbolic dim and no input_shapes: what the service says of it.
        with pytest.raises(InvalidModelError, match="input") as raised:
            p.predict(factories.symbolic_batch_model())
        assert isinstance(raised.value.__cause__, ServiceHTTPError) and raised.value.__cause__.status_code == 422
    with LatpredClient(served, token=SERVICE_TOKEN) as client:
        client.register_device(**(device_fields("empty-remote-device")))
    with Predictor("empty-remote-device", url=served, token=SERVICE_TOKEN) as empty:
        with pytest.raises(NoMeasurementsError, match="no measurements"):
            empty.predict("model.onnx")


def test_import_predictor_stays_light() -> None:
    """`import predictor` loads no runtime, store or web code; `predictor.Predictor` loads on first use."""
    code = ("import sys, predictor; print(sorted(m for m in ('onnx', 'onnxruntime', 'sqlalchemy', 'httpx', 'numpy') "
            "if m in sys.modules)); from predictor import Predictor; print(Predictor.__module__)")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}).stdout
    assert output.split("\n")[:2] == ["[]", "predictor.api"]
