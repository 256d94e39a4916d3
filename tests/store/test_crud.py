"""Reads and writes of the store, run against SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import math
import random
import threading
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from predictor.errors import (
    DeviceConflictError,
    InvalidRecordError,
    LatpredError,
    UnknownDeviceError,
    UnknownRunError,
)
from predictor.store import (
    Device,
    Measurement,
    MeasurementIn,
    ProfilingRun,
    Regressor,
    RunClosedError,
    add_measurements,
    add_validation,
    count_measurements_by_op,
    find_measurement_conflicts,
    finish_run,
    get_device,
    get_stored_model,
    iter_measurements,
    list_devices,
    list_runs,
    list_validations,
    load_regressors,
    lookup_table,
    measured_key_hashes,
    register_device,
    save_regressor,
    save_stored_model,
    session_scope,
    set_overhead,
    start_run,
    summarize_device,
    update_run_report,
)


def _measurement(
    index: int, median_ms: float = 1.0, op_type: str = "Conv", bits: int = 32, **changes: object
) -> MeasurementIn:
    row = MeasurementIn(
        key={"op": op_type, "shape": [1, 3, 224, index], "bits": bits},
        key_hash=f"{index:064x}",
        op_type=op_type,
        bits=bits,
        median_ms=median_ms,
        p10_ms=median_ms * 0.9,
        p90_ms=median_ms * 1.2,
        repeats=50,
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def _new_device(session: Session, name: str = "xeon-ort-4t", runtime_version: str = "1.18.0",
                kernel_profile: dict[str, Any] | None = None) -> Device:
    return register_device(
        session,
        name=name,
        backend="onnxruntime",
        execution_provider="CPUExecutionProvider",
        runtime_version=runtime_version,
        threads=4,
        host="Intel Xeon Gold 6248",
        kernel_profile=kernel_profile,
    )


def _count(session: Session, model: type[object]) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


@pytest.fixture
def device(factory: sessionmaker[Session]) -> Device:
    with session_scope(factory) as session:
        return _new_device(session)


def test_add_measurements_is_idempotent(factory: sessionmaker[Session], device: Device) -> None:
    batch = [_measurement(i) for i in range(5)]
    with session_scope(factory) as session:
        assert add_measurements(session, device, "run-1", batch) == 5
    with session_scope(factory) as session:
        assert add_measurements(session, device, "run-1", batch) == 0
        assert add_measurements(session, device, "run-1", batch + [_measurement(5)]) == 1
        assert _count(session, Measurement) == 6


def test_duplicates_within_a_batch_collapse_to_the_first(
    factory: sessionmaker[Session], device: Device
) -> None:
    batch = [_measurement(1, median_ms=2.0), _measurement(2), _measurement(1, median_ms=7.0)]
    with session_scope(factory) as session:
        assert add_measurements(session, device, "run-1", batch) == 2
        assert lookup_table(session, device) == {f"{1:064x}": 2.0, f"{2:064x}": 1.0}


def test_same_key_in_another_run_or_device_is_a_new_row(
    factory: sessionmaker[Session], device: Device
) -> None:
    with session_scope(factory) as session:
        other = _new_device(session, "jetson-trt")
        assert add_measurements(session, device, "run-1", [_measurement(1)]) == 1
        assert add_measurements(session, device, "run-2", [_measurement(1)]) == 1
        assert add_measurements(session, other, "run-1", [_measurement(1)]) == 1
        assert _count(session, Measurement) == 3
        stored = session.scalars(select(Measurement).order_by(Measurement.id)).first()
        assert stored is not None
        assert stored.key == {"op": "Conv", "shape": [1, 3, 224, 1], "bits": 32}
        assert (stored.p10_ms, stored.median_ms, stored.p90_ms, stored.repeats) == (0.9, 1.0, 1.2, 50)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"median_ms": math.nan}, "median_ms"),
        ({"p90_ms": math.inf}, "p90_ms"),
        ({"p10_ms": -0.1}, "p10_ms"),
        ({"median_ms": 0.0, "p10_ms": 0.0}, "median_ms"),
        ({"p10_ms": 1.5}, "p10_ms"),
        ({"p90_ms": 0.95}, "p90_ms"),
        ({"repeats": 0}, "repeats"),
        ({"bits": 0}, "bits"),
        ({"op_type": ""}, "op_type"),
    ],
)
def test_invalid_row_rejects_the_whole_batch(
    factory: sessionmaker[Session], device: Device, changes: dict[str, object], field: str
) -> None:
    bad = dataclasses.replace(_measurement(99), **changes)  # type: ignore[arg-type]
    batch = [_measurement(1), _measurement(2), bad, _measurement(3)]
    with session_scope(factory) as session:
        with pytest.raises(InvalidRecordError, match=rf"{bad.key_hash}.*{field}"):
            add_measurements(session, device, "run-1", batch)
        assert _count(session, Measurement) == 0


def test_percentile_order_tolerates_float_rounding(factory: sessionmaker[Session], device: Device) -> None:
    row = _measurement(1, median_ms=0.3, p10_ms=0.1 + 0.2, p90_ms=0.3)  # 0.30000000000000004 > 0.3
    assert row.p10_ms > row.median_ms
    with session_scope(factory) as session:
        assert add_measurements(session, device, "run-1", [row]) == 1


@pytest.mark.parametrize("run_id", ["", "x" * 65])
def test_bad_run_id_is_rejected(factory: sessionmaker[Session], device: Device, run_id: str) -> None:
    with session_scope(factory) as session:
        with pytest.raises(InvalidRecordError, match="run_id"):
            add_measurements(session, device, run_id, [_measurement(1)])


def test_concurrent_uploads_of_one_run_insert_each_key_once(
    factory: sessionmaker[Session], device: Device
) -> None:
    keys = 300
    threads = 4
    barrier = threading.Barrier(threads)
    inserted: list[int] = []
    errors: list[BaseException] = []

    def upload(seed: int) -> None:
        batch = [_measurement(i, median_ms=1.0 + i) for i in range(keys)]
        random.Random(seed).shuffle(batch)
        try:
            barrier.wait(timeout=30)
            with session_scope(factory) as session:
                inserted.append(add_measurements(session, device, "run-shared", batch))
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    workers = [threading.Thread(target=upload, args=(seed,)) for seed in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    assert len(inserted) == threads
    assert sum(inserted) == keys
    with session_scope(factory) as session:
        assert _count(session, Measurement) == keys
        assert len(measured_key_hashes(session, device)) == keys


def test_lookup_table_takes_the_median_of_run_medians(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        for run_id, median_ms in (("r1", 1.0), ("r2", 2.0), ("r3", 10.0)):
            add_measurements(session, device, run_id, [_measurement(1, median_ms=median_ms)])
        for run_id, median_ms in (("r1", 1.0), ("r2", 4.0)):
            add_measurements(session, device, run_id, [_measurement(2, median_ms=median_ms)])
        add_measurements(session, device, "r1", [_measurement(3, median_ms=5.0)])
        other = _new_device(session, "other")
        add_measurements(session, other, "r1", [_measurement(4, median_ms=9.0)])

        table = lookup_table(session, device)
        assert table == {f"{1:064x}": 2.0, f"{2:064x}": 2.5, f"{3:064x}": 5.0}
        assert lookup_table(session, other) == {f"{4:064x}": 9.0}


def test_iterate_and_count_measurements(factory: sessionmaker[Session], device: Device) -> None:
    rows = [_measurement(i, op_type="Conv", bits=8 if i % 2 else 32) for i in range(6)]
    rows += [_measurement(10 + i, op_type="MatMul") for i in range(3)]
    with session_scope(factory) as session:
        add_measurements(session, device, "r1", rows)
        assert count_measurements_by_op(session, device) == {"Conv": 6, "MatMul": 3}
        assert len(list(iter_measurements(session, device))) == 9
        int8_conv = list(iter_measurements(session, device, op_type="Conv", bits=8))
        assert [m.key_hash for m in int8_conv] == [f"{i:064x}" for i in (1, 3, 5)]
        page = list(iter_measurements(session, device, op_type="Conv", limit=2, offset=3))
        assert [m.key_hash for m in page] == [f"{i:064x}" for i in (3, 4)]
        assert measured_key_hashes(session, device) == {row.key_hash for row in rows}


def test_get_device_unknown_names_the_known_devices(factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as session:
        with pytest.raises(UnknownDeviceError, match=r"unknown device 'gpu'; known: none"):
            get_device(session, "gpu")
        _new_device(session, "cpu-b")
        _new_device(session, "cpu-a")
        with pytest.raises(UnknownDeviceError) as info:
            get_device(session, "gpu")
        assert str(info.value) == "unknown device 'gpu'; known: 'cpu-a', 'cpu-b'"
        assert isinstance(info.value, LatpredError)
        assert get_device(session, "cpu-a").name == "cpu-a"


def test_registering_a_device_again_with_another_runtime_is_a_conflict(factory: sessionmaker[Session],
                                                                        device: Device) -> None:
    with session_scope(factory) as session:
        same = _new_device(session, device.name)
        assert (same.id, same.created_at) == (device.id, device.created_at)
    with session_scope(factory) as session, pytest.raises(DeviceConflictError, match="runtime_version"):
        _new_device(session, device.name, runtime_version="1.19.2")
    with session_scope(factory) as session:
        assert [(d.name, d.runtime_version) for d in list_devices(session)] == [(device.name, device.runtime_version)]


def test_a_device_keeps_its_kernel_profile(factory: sessionmaker[Session], device: Device) -> None:
    profile = {"version": 1, "backend": "onnxruntime", "runtime_version": "1.18.0", "machine": "aarch64",
               "isa": ["asimd"], "nchwc_block": 0, "execution_provider": "CPUExecutionProvider", "probes": {}}
    with session_scope(factory) as session:
        assert _new_device(session, device.name, kernel_profile=profile).kernel_profile == profile
    with session_scope(factory) as session:
        assert _new_device(session, device.name, kernel_profile=profile).kernel_profile == profile
    with session_scope(factory) as session, pytest.raises(DeviceConflictError, match="machine"):
        _new_device(session, device.name, kernel_profile={**profile, "machine": "x86_64"})


def test_runs_start_idempotently_and_finish(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        run = start_run(session, device, "run-1", 30.0)
        again = start_run(session, device, "run-1", 99.0)
        assert (again.id, again.budget_minutes, again.status) == (run.id, 30.0, "running")
        assert _count(session, ProfilingRun) == 1
    with session_scope(factory) as session:
        finished = finish_run(session, "run-1", "finished", {"kernels": 120})
        assert finished.status == "finished"
        assert finished.finished_at is not None and finished.finished_at >= finished.started_at
        start_run(session, device, "run-2", None)
        assert [(r.run_id, r.status, r.report) for r in list_runs(session, device)] == [
            ("run-1", "finished", {"kernels": 120}),
            ("run-2", "running", None),
        ]
        with pytest.raises(InvalidRecordError, match="status"):
            finish_run(session, "run-2", "paused", None)
        with pytest.raises(UnknownRunError, match="unknown run 'nope'"):
            finish_run(session, "nope", "killed", None)
        other = _new_device(session, "other")
        with pytest.raises(InvalidRecordError, match="belongs to"):
            start_run(session, other, "run-1", None)


def test_closed_runs_are_final(factory: sessionmaker[Session], device: Device) -> None:
    """A finished or killed run keeps its status and report; the same finish again is a retry and changes nothing."""
    with session_scope(factory) as session:
        start_run(session, device, "run-1", None)
        update_run_report(session, "run-1", {"items_done": ["a"]})
        first = finish_run(session, "run-1", "finished", {"items_done": ["a", "b"]})
        finished_at = first.finished_at
    with session_scope(factory) as session:
        again = finish_run(session, "run-1", "finished", {"items_done": ["a", "b"]})
        assert (again.status, again.report, again.finished_at) == ("finished", {"items_done": ["a", "b"]}, finished_at)
        for status, report in (("finished", {"items_done": []}), ("killed", {"items_done": ["a", "b"]}),
                               ("finished", None)):
            with pytest.raises(RunClosedError, match="run 'run-1' is finished since .* UTC"):
                finish_run(session, "run-1", status, report)
        with pytest.raises(RunClosedError, match="report cannot change"):
            update_run_report(session, "run-1", {"items_done": []})
    with session_scope(factory) as session:
        stored = list_runs(session, device)[0]
        assert (stored.status, stored.report) == ("finished", {"items_done": ["a", "b"]})


def test_conflicting_duplicates_are_found_and_the_first_median_kept(
        factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        rows = [_measurement(1, 1.0), _measurement(2, 2.0), _measurement(1, 1.5)]
        assert add_measurements(session, device, "run-1", rows) == 2
        conflicts = find_measurement_conflicts(session, device, "run-1", rows)
        assert [(c.key_hash, c.stored_median_ms, c.sent_median_ms) for c in conflicts] == [(f"{1:064x}", 1.0, 1.5)]
    with session_scope(factory) as session:
        retry = [_measurement(2, 2.0), _measurement(1, 1.0)]
        assert add_measurements(session, device, "run-1", retry) == 0
        assert find_measurement_conflicts(session, device, "run-1", retry) == []
        late = [_measurement(2, 2.5), _measurement(3, 3.0)]
        assert add_measurements(session, device, "run-1", late) == 1
        assert [c.sent_median_ms for c in find_measurement_conflicts(session, device, "run-1", late)] == [2.5]
        assert find_measurement_conflicts(session, device, "run-2", late) == []
        assert lookup_table(session, device) == {f"{1:064x}": 1.0, f"{2:064x}": 2.0, f"{3:064x}": 3.0}


def test_save_regressor_replaces_the_previous_one(factory: sessionmaker[Session], device: Device) -> None:
    big_text = "tree\n" + "x" * 3_000_000
    with session_scope(factory) as session:
        save_regressor(session, device, "Conv", "tree\nversion=v4\n", {"mape": 0.2}, "v1")
        save_regressor(session, device, "MatMul", "tree\nmatmul\n", {"mape": 0.1}, "v1")
    with session_scope(factory) as session:
        replaced = save_regressor(session, device, "Conv", big_text, {"mape": 0.05}, "v2")
        assert (replaced.model_text, replaced.data_version) == (big_text, "v2")
    with session_scope(factory) as session:
        assert _count(session, Regressor) == 2
        loaded = load_regressors(session, device)
        assert sorted(loaded) == ["Conv", "MatMul"]
        assert loaded["Conv"].model_text == big_text
        assert loaded["Conv"].metrics == {"mape": 0.05}
        assert loaded["MatMul"].data_version == "v1"


def test_overhead_and_validations(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        set_overhead(session, device, {"per_run_ms": 0.25, "per_kernel_ms": 0.01})
        add_validation(
            session, device, model_name="resnet18", config_name="int8", predicted_ms=10.0, measured_ms=11.5
        )
        add_validation(
            session, device, model_name="resnet18", config_name="fp32", predicted_ms=20.0, measured_ms=19.0
        )
        with pytest.raises(InvalidRecordError, match="overhead 'per_run_ms'"):
            set_overhead(session, device, {"per_run_ms": math.nan})
        with pytest.raises(InvalidRecordError, match="measured_ms"):
            add_validation(
                session, device, model_name="m", config_name="c", predicted_ms=1.0, measured_ms=math.inf
            )
    with session_scope(factory) as session:
        assert get_device(session, device.name).overhead == {"per_run_ms": 0.25, "per_kernel_ms": 0.01}
        pairs = [(v.config_name, v.predicted_ms, v.measured_ms) for v in list_validations(session, device)]
        assert pairs == [("int8", 10.0, 11.5), ("fp32", 20.0, 19.0)]


def test_stored_models_are_idempotent_by_content_id(factory: sessionmaker[Session]) -> None:
    model_id = "ab" * 32
    inputs = [{"name": "input", "shape": [1, 3, 224, 224], "dtype": "float32"}]
    with session_scope(factory) as session:
        assert get_stored_model(session, model_id) is None
        save_stored_model(
            session, model_id=model_id, name="resnet18.onnx", size_bytes=46_000_000, inputs=inputs
        )
        again = save_stored_model(
            session, model_id=model_id, name="renamed.onnx", size_bytes=1, inputs=[], kernels=[{"op": "Conv"}]
        )
        assert (again.name, again.size_bytes, again.kernels) == (
            "resnet18.onnx",
            46_000_000,
            [{"op": "Conv"}],
        )
        with pytest.raises(InvalidRecordError, match="sha256"):
            save_stored_model(session, model_id="not-a-hash", name="m", size_bytes=1, inputs=[])
    with session_scope(factory) as session:
        stored = get_stored_model(session, model_id)
        assert stored is not None
        assert (stored.inputs, stored.kernels) == (inputs, [{"op": "Conv"}])


def test_a_new_device_summarizes_as_empty(factory: sessionmaker[Session], device: Device) -> None:
    with session_scope(factory) as session:
        summary = summarize_device(session, get_device(session, device.name))
    assert summary.device.name == device.name
    assert (summary.measurements_by_op, summary.measurement_count, summary.op_types) == ({}, 0, [])
    assert (summary.regressors, summary.run_count, summary.last_run) == ({}, 0, None)


def test_the_device_summary_counts_rows_per_op_regressors_and_runs(factory: sessionmaker[Session],
                                                                   device: Device) -> None:
    """The one summary `latpred devices`, `GET /api/v1/devices/{name}` and the dashboard list a device by."""
    with session_scope(factory) as session:
        start_run(session, device, "run-1")
        add_measurements(session, device, "run-1", [_measurement(i) for i in range(3)]
                         + [_measurement(10 + i, op_type="Gemm") for i in range(2)])
        start_run(session, device, "run-2")
        add_measurements(session, device, "run-2", [_measurement(0)])  # the same key measured again
        save_regressor(session, device, "Conv", "tree\n", {"mape": 0.12}, "v1")
    with session_scope(factory) as session:
        summary = summarize_device(session, get_device(session, device.name))
    assert summary.measurements_by_op == {"Conv": 4, "Gemm": 2}
    assert summary.measurement_count == 6 and summary.op_types == ["Conv", "Gemm"]
    assert list(summary.regressors) == ["Conv"] and summary.regressors["Conv"].metrics == {"mape": 0.12}
    assert summary.run_count == 2
    assert summary.last_run is not None and summary.last_run.run_id == "run-2"
