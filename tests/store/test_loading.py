"""Loading a device's predictor from the store's aggregates, and bringing a loaded one up to date (SQLite and
PostgreSQL): the same predictor as a fresh load, without parsing keys or re-reading what did not change."""
from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

import predictor.estimation.estimate as estimate
from predictor.estimation.context import ContextModel
from predictor.estimation.estimate import DevicePredictor, fit_bandwidth_fallback
from predictor.kernels.keys import KernelKey
from predictor.store import (
    Device,
    MeasurementIn,
    add_measurements,
    finish_run,
    get_device,
    lookup_table,
    register_device,
    session_factory,
    session_scope,
    set_overhead,
    start_run,
)
from tests.factories import kernel_measurement_rows

CONTEXT = ContextModel(beta=0.3, base_mb=0.01, width_octaves=4.0)


def _keys(count: int, seed: int = 0) -> list[tuple[KernelKey, float]]:
    return [(KernelKey.from_dict(row["key"]), float(row["median_ms"]))  # type: ignore[arg-type]
            for row in kernel_measurement_rows(count, seed)]


def _upload(factory: sessionmaker[Session], run_id: str, rows: list[tuple[KernelKey, float]]) -> None:
    with session_scope(factory) as session:
        device = get_device(session, "load-cpu")
        start_run(session, device, run_id)
        add_measurements(session, device, run_id, [
            MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                          median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, repeats=10) for key, ms in rows])


@pytest.fixture
def factory(store_engine: Engine) -> sessionmaker[Session]:
    factory = session_factory(store_engine)
    with session_scope(factory) as session:
        register_device(session, name="load-cpu", backend="onnxruntime", execution_provider="CPUExecutionProvider",
                        runtime_version="1.0", threads=1, host="test")
    return factory


def _load(factory: sessionmaker[Session]) -> DevicePredictor:
    with session_scope(factory) as session:
        return DevicePredictor.load(session, get_device(session, "load-cpu"))


def _updated(factory: sessionmaker[Session], predictor: DevicePredictor) -> DevicePredictor:
    with session_scope(factory) as session:
        return predictor.updated(session, get_device(session, "load-cpu"))


def _same(first: DevicePredictor, second: DevicePredictor, asked: list[KernelKey]) -> None:
    """Equal tables, fallbacks, context and answers."""
    assert dict(first.table) == pytest.approx(dict(second.table), rel=1e-12)
    assert first.fallback == pytest.approx(second.fallback, rel=1e-9)
    assert first.context == second.context and first.flat_axes == second.flat_axes
    assert [s.latency_ms for s in first.summarize_many([asked, asked[:7]])] == pytest.approx(
        [s.latency_ms for s in second.summarize_many([asked, asked[:7]])], rel=1e-9)


def test_loading_parses_no_key(factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is looked up by key-hash digest, the fallback fitted on the stored bytes and MACs."""
    rows = _keys(200)
    _upload(factory, "run-1", rows)
    _upload(factory, "run-2", [(key, ms * 3) for key, ms in rows[:40]])

    def no_parsing(cls: type[KernelKey], data: Any) -> KernelKey:
        raise AssertionError("a key was parsed while loading")

    with monkeypatch.context() as patched:
        patched.setattr(KernelKey, "from_dict", classmethod(no_parsing))
        predictor = _load(factory)
    with session_scope(factory) as session:
        expected = lookup_table(session, get_device(session, "load-cpu"))
    assert dict(predictor.table) == pytest.approx(expected, rel=1e-12) and len(expected) == 200
    assert predictor.table[rows[0][0].key_hash] == pytest.approx(rows[0][1] * 2)  # median of 1x and 3x
    assert predictor.fallback == pytest.approx(
        fit_bandwidth_fallback([(key, expected[key.key_hash]) for key, _ in rows]), rel=1e-9)
    assert predictor.summarize_many([[rows[5][0], rows[150][0]]])[0].sources == {"table": 2}


@pytest.mark.parametrize("with_context", [False, True], ids=["plain", "context"])
def test_an_updated_predictor_is_a_fresh_load(factory: sessionmaker[Session], with_context: bool,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """New runs (new keys, keys measured again) merged into a loaded predictor give what loading anew gives."""
    rows = _keys(300)
    _upload(factory, "run-1", rows[:200])
    if with_context:
        with session_scope(factory) as session:
            device = get_device(session, "load-cpu")
            set_overhead(session, device, {"per_run_ms": 0.1, "context": CONTEXT.to_dict()})
            # Samples naming keys measured so far and keys only a later run measures.
            finish_run(session, "run-1", "finished", {"end_to_end": [
                {"kernel_hashes": [key.key_hash for key, _ in rows[0:20]]},
                {"kernel_hashes": [key.key_hash for key, _ in rows[190:210]]}]})
    loaded = _load(factory)
    assert (loaded.context is not None) is with_context
    reads: list[Any] = []
    read = estimate.read_measured_rows

    def counting_read(session: Session, device_id: int, **kwargs: Any) -> Any:
        reads.append(kwargs)
        return read(session, device_id, **kwargs)

    monkeypatch.setattr(estimate, "read_measured_rows", counting_read)
    assert _updated(factory, loaded) is loaded, "nothing changed: the same predictor, nothing read"
    assert reads == []

    _upload(factory, "run-2", [(key, ms * 2) for key, ms in rows[150:260]])
    _upload(factory, "run-3", [(key, ms * 5) for key, ms in rows[100:160]] + rows[260:300])
    updated = _updated(factory, loaded)
    assert len(reads) == 1 and reads[0]["after_seq"] == loaded.version.table_seq  # type: ignore[union-attr]
    fresh = _load(factory)
    asked = [key for key, _ in rows[::7]] + [key for key, _ in _keys(320, seed=3)[300:]]
    _same(updated, fresh, asked)
    assert updated.measurement_count == 300 and loaded.measurement_count == 200, "the loaded one is left as it was"
    assert updated.version == fresh.version

    # Runs, regressors and overhead changed, the table did not: they are read again, the rows are not.
    with session_scope(factory) as session:
        finish_run(session, "run-2", "finished", {"flat_axes": {"QLinearConv": ["sparsity"]}})
    reads.clear()
    again = _updated(factory, updated)
    assert reads == [] and again.flat_axes == {"QLinearConv": {"sparsity"}}
    _same(again, _load(factory), asked)


def test_a_device_registered_anew_is_loaded_anew(factory: sessionmaker[Session], store_engine: Engine) -> None:
    rows = _keys(20)
    _upload(factory, "run-1", rows)
    loaded = _load(factory)
    with session_scope(factory) as session:
        session.delete(get_device(session, "load-cpu"))
    with session_scope(factory) as session:
        register_device(session, name="load-cpu", backend="onnxruntime", execution_provider="CPUExecutionProvider",
                        runtime_version="1.0", threads=1, host="test")
    _upload(factory, "run-9", rows[:5])
    with session_scope(factory) as session:
        device: Device = get_device(session, "load-cpu")
        updated = loaded.updated(session, device)
    assert updated.measurement_count == 5 and updated.version is not None
    assert updated.version.registered_at == device.created_at != loaded.version.registered_at  # type: ignore[union-attr]
