"""Reads and writes of the store; every function takes a Session first, flushes, never commits."""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from predictor.errors import (
    DeviceConflictError,
    InvalidRecordError,
    LatpredError,
    UnknownDeviceError,
    UnknownRunError,
)
from predictor.records import Measurement as MeasurementRecord
from predictor.store.aggregates import (
    TableVersion,
    bump_state_version,
    read_table_version,
    read_tallies,
    record_measurements,
)
from predictor.store.models import (
    Device,
    MeasuredKernel,
    Measurement,
    ProfilingRun,
    Regressor,
    StoredModel,
    Validation,
    utc_now,
)
from predictor.store.summary import KernelSummary
from predictor.store.upsert import dialect_insert, insert_new_rows

__all__ = [
    "RUN_STATUSES",
    "MeasurementConflict",
    "MeasurementIn",
    "RegressorMetrics",
    "RunClosedError",
    "RunSummary",
    "StoredModelSummary",
    "add_measurements",
    "add_validation",
    "count_measurements",
    "count_measurements_by_op",
    "find_measurement_conflicts",
    "finish_run",
    "get_device",
    "get_run",
    "get_stored_model",
    "iter_measured_medians",
    "iter_measurements",
    "list_devices",
    "list_regressor_metrics",
    "list_runs",
    "list_stored_models",
    "list_validations",
    "load_regressors",
    "lookup_table",
    "measured_key_hashes",
    "save_regressor",
    "save_stored_model",
    "set_overhead",
    "start_run",
    "summarize_runs",
    "table_version",
    "update_run_report",
    "register_device",
]

logger = logging.getLogger(__name__)

RUN_STATUSES = ("running", "finished", "killed")
# A run in one of these states is closed: its status, report and measurements no longer change.
_CLOSED_STATUSES = ("finished", "killed")
# Percentiles come from a float summary of the same samples: allow rounding noise, not disorder.
_ORDER_REL_TOLERANCE = 1e-6
_ORDER_ABS_TOLERANCE = 1e-9
# Rows per INSERT statement; stays below SQLite's bound-parameter limit (12 columns per row).
_INSERT_CHUNK_ROWS = 500
_MAX_KNOWN_NAMES_IN_ERROR = 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class RunClosedError(LatpredError):
    """The run is finished or killed: what it measured and reported is final."""


@dataclass(frozen=True)
class MeasurementConflict:
    """A measurement sent for a (run, key) that is stored with another median: the stored one is kept."""

    key_hash: str
    op_type: str
    stored_median_ms: float
    sent_median_ms: float


@dataclass(frozen=True)
class MeasurementIn(MeasurementRecord):
    """One kernel measurement to store (predictor.records.Measurement), with its key's summary if known.

    `summary`: the key's summary (predictor.store.summary) where the caller computed it already (the REST API
    does, checking the key); the store computes it otherwise.
    """

    summary: KernelSummary | None = dataclasses.field(default=None, compare=False)


def _check_identifier(what: str, value: object, max_length: int) -> None:
    """Raise InvalidRecordError unless value is a non-empty string of at most max_length characters."""
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidRecordError(
            f"{what} must be a non-empty string of at most {max_length} characters, got {value!r}"
        )


def _is_int(value: object) -> bool:
    """Whether value is an int proper (bool is excluded: True is not a bit-width)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: object) -> bool:
    """Whether value is a real, finite int or float (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _not_above(lower: float, upper: float) -> bool:
    """Whether lower <= upper up to float rounding noise."""
    return lower <= upper or math.isclose(
        lower, upper, rel_tol=_ORDER_REL_TOLERANCE, abs_tol=_ORDER_ABS_TOLERANCE
    )


def _check_measurement(row: MeasurementIn) -> None:
    """Raise InvalidRecordError naming the key hash and the field if the measurement is not plausible."""
    key_hash = row.key_hash
    if not isinstance(key_hash, str) or not key_hash or len(key_hash) > 64:
        raise InvalidRecordError(
            f"measurement key_hash must be a non-empty string of at most 64 chars, got {key_hash!r}"
        )

    def fail(field: str, problem: str, value: object) -> InvalidRecordError:
        return InvalidRecordError(f"measurement {key_hash!r}: {field} {problem}, got {value!r}")

    if not isinstance(row.key, Mapping):
        raise fail("key", "must be a dict", row.key)
    if not isinstance(row.op_type, str) or not row.op_type or len(row.op_type) > 64:
        raise fail("op_type", "must be a non-empty string of at most 64 chars", row.op_type)
    if not _is_int(row.bits) or row.bits < 1:
        raise fail("bits", "must be an int >= 1", row.bits)
    if not _is_int(row.repeats) or row.repeats < 1:
        raise fail("repeats", "must be an int >= 1", row.repeats)
    for field in ("median_ms", "p10_ms", "p90_ms"):
        value = getattr(row, field)
        if not _is_finite_number(value) or value <= 0:
            raise fail(field, "must be a finite number > 0", value)
    if not _not_above(row.p10_ms, row.median_ms):
        raise fail("p10_ms", f"must not exceed median_ms={row.median_ms!r}", row.p10_ms)
    if not _not_above(row.median_ms, row.p90_ms):
        raise fail("p90_ms", f"must not be below median_ms={row.median_ms!r}", row.p90_ms)


def _refetch_device(session: Session, device: Device) -> Device:
    """Return the session's own instance of the device (it may come detached from another session)."""
    own = session.get(Device, device.id)
    if own is None:
        raise UnknownDeviceError(f"unknown device {device.name!r} (id {device.id}); it was deleted")
    return own


def get_device(session: Session, name: str) -> Device:
    """Return the device of that name; raise UnknownDeviceError listing the known names otherwise."""
    device = session.scalars(select(Device).where(Device.name == name)).one_or_none()
    if device is not None:
        return device
    known = list(session.scalars(select(Device.name).order_by(Device.name)))
    shown = ", ".join(repr(known_name) for known_name in known[:_MAX_KNOWN_NAMES_IN_ERROR]) or "none"
    if len(known) > _MAX_KNOWN_NAMES_IN_ERROR:
        shown += f", ... ({len(known) - _MAX_KNOWN_NAMES_IN_ERROR} more)"
    raise UnknownDeviceError(f"unknown device {name!r}; known: {shown}")


def register_device(
    session: Session,
    *,
    name: str,
    backend: str,
    execution_provider: str,
    runtime_version: str,
    threads: int,
    host: str,
    kernel_profile: dict[str, Any] | None = None,
) -> Device:
    """Create the device, or return it if the name exists with the same runtime; safe under concurrent registration.

    A device is a runtime, its version, execution provider and thread count on one kind of host: registering the
    name again with another of these, or with a kernel profile (predictor.runtime.devices) that decides other kernels,
    is a DeviceConflictError naming what differs, never an overwrite (its table would mix devices). A device
    registered before it had a kernel profile takes the first one it is given; its host text is kept current.
    """
    _check_identifier("device name", name, 128)
    _check_identifier("backend", backend, 32)
    _check_identifier("execution_provider", execution_provider, 128)
    _check_identifier("runtime_version", runtime_version, 64)
    if not _is_int(threads) or threads < 0:
        raise InvalidRecordError(f"threads must be an int >= 0 (0: runtime default), got {threads!r}")
    if not isinstance(host, str):
        raise InvalidRecordError(f"host must be a string, got {host!r}")
    if kernel_profile is not None and not isinstance(kernel_profile, dict):
        raise InvalidRecordError("kernel_profile must be a JSON object")
    fields = {"backend": backend, "execution_provider": execution_provider, "runtime_version": runtime_version,
              "threads": threads}
    session.flush()
    table = Device.__table__
    assert isinstance(table, Table)
    session.execute(
        dialect_insert(session, table)
        .values(name=name, created_at=utc_now(), host=host, kernel_profile=kernel_profile, **fields)
        .on_conflict_do_nothing(index_elements=[table.c.name])
    )
    device = session.scalars(
        select(Device).where(Device.name == name).execution_options(populate_existing=True)
    ).one()
    differs = [f"{field} {getattr(device, field)!r} (asked: {value!r})" for field, value in fields.items()
               if getattr(device, field) != value]
    if kernel_profile is not None and device.kernel_profile is not None:
        differs += _profile_differences(device.kernel_profile, kernel_profile)
    if differs:
        raise DeviceConflictError(
            f"device {name!r} is registered with {'; '.join(differs)}: a device is one runtime on one kind of "
            "host; register this one under another name")
    if kernel_profile is not None and device.kernel_profile is None:
        device.kernel_profile = kernel_profile
        session.flush()
        bump_state_version(session, device.id)
    if host and device.host != host:
        device.host = host
    session.flush()
    logger.debug("registered device %r (id %d)", name, device.id)
    return device


_PROFILE_FIELDS = ("backend", "runtime_version", "execution_provider", "machine", "isa", "nchwc_block")


def _profile_differences(stored: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """What two kernel profiles disagree on: the fields that decide kernels, then the probes' kernels."""
    differs = [f"{field} {stored.get(field)!r} (asked: {given.get(field)!r})" for field in _PROFILE_FIELDS
               if stored.get(field) != given.get(field)]
    if not differs and stored.get("probes") != given.get("probes"):
        differs.append("other kernels for the probe models (a profile of another latpred version or runtime build)")
    return differs


def list_devices(session: Session) -> list[Device]:
    """Return all devices ordered by name."""
    return list(session.scalars(select(Device).order_by(Device.name)))


def add_measurements(session: Session, device: Device, run_id: str, rows: Sequence[MeasurementIn]) -> int:
    """Append measurements of one run; return how many were new.

    Idempotent and safe under concurrent uploads: rows whose (device, key_hash, run_id) exist are
    skipped (INSERT ... ON CONFLICT DO NOTHING), duplicates within the batch collapse to the first.
    Every row is validated before anything is written: InvalidRecordError names the key hash and field.
    The rows that were new are folded into the device's aggregates in the same transaction
    (predictor.store.aggregates): its measured kernels, tallies and table sequence.
    """
    _check_identifier("run_id", run_id, 64)
    for row in rows:
        _check_measurement(row)
    first_by_hash: dict[str, MeasurementIn] = {}
    for row in rows:
        first_by_hash.setdefault(row.key_hash, row)
    if not first_by_hash:
        return 0
    created_at = utc_now()
    # Sorted so concurrent writers take row locks in the same order (no deadlocks on PostgreSQL).
    values = [
        {
            "device_id": device.id,
            "run_id": run_id,
            "key_hash": key_hash,
            "key": dict(row.key),
            "op_type": row.op_type,
            "bits": row.bits,
            "median_ms": float(row.median_ms),
            "p10_ms": float(row.p10_ms),
            "p90_ms": float(row.p90_ms),
            "repeats": row.repeats,
            "created_at": created_at,
        }
        for key_hash, row in sorted(first_by_hash.items())
    ]
    session.flush()
    table = Measurement.__table__
    assert isinstance(table, Table)
    inserted = insert_new_rows(session, table, values, ("device_id", "key_hash", "run_id"), "key_hash")
    record_measurements(session, device.id, [first_by_hash[key_hash] for key_hash in inserted])
    logger.debug("run %r on device %r: %d of %d measurements new", run_id, device.name, len(inserted), len(values))
    return len(inserted)


def find_measurement_conflicts(
    session: Session, device: Device, run_id: str, rows: Sequence[MeasurementIn]
) -> list[MeasurementConflict]:
    """The rows whose (device, run, key) is stored with another median, in the rows' order.

    Call it after add_measurements in the same transaction: a duplicate with the same median is a retry, one
    with another median is a conflict, and the first stored value stays.
    """
    hashes = sorted({row.key_hash for row in rows})
    stored: dict[str, float] = {}
    for start in range(0, len(hashes), _INSERT_CHUNK_ROWS):
        chunk = hashes[start : start + _INSERT_CHUNK_ROWS]
        result = session.execute(
            select(Measurement.key_hash, Measurement.median_ms).where(
                Measurement.device_id == device.id, Measurement.run_id == run_id, Measurement.key_hash.in_(chunk)))
        stored.update((key_hash, median_ms) for key_hash, median_ms in result)
    return [
        MeasurementConflict(key_hash=row.key_hash, op_type=row.op_type, stored_median_ms=stored[row.key_hash],
                            sent_median_ms=float(row.median_ms))
        for row in rows
        if row.key_hash in stored and stored[row.key_hash] != float(row.median_ms)
    ]


def measured_key_hashes(session: Session, device: Device) -> set[str]:
    """Return the key hashes measured on the device in any run."""
    return set(session.scalars(select(MeasuredKernel.key_hash).where(MeasuredKernel.device_id == device.id)))


def lookup_table(session: Session, device: Device) -> dict[str, float]:
    """Map key hash to median latency in ms; a key measured in several runs gets the median of medians."""
    rows = session.execute(
        select(MeasuredKernel.key_hash, MeasuredKernel.median_ms).where(MeasuredKernel.device_id == device.id))
    return {key_hash: float(median_ms) for key_hash, median_ms in rows}


def table_version(session: Session, device_name: str) -> TableVersion:
    """What a loaded predictor of the device must match to be current (aggregates.TableVersion).

    One indexed row read: cheap enough to check before every use of a cached predictor. Raises
    UnknownDeviceError listing the known names.
    """
    version = read_table_version(session, device_name)
    if version is None:
        get_device(session, device_name)  # raises, naming the known devices
        raise UnknownDeviceError(f"unknown device {device_name!r}")
    return version


def iter_measurements(
    session: Session,
    device: Device,
    op_type: str | None = None,
    bits: int | None = None,
    limit: int | None = None,
    offset: int = 0,
    after_id: int | None = None,
) -> Iterator[Measurement]:
    """Yield the device's measurements in insertion order, optionally filtered by op type and bits.

    `after_id`: only rows after that measurement id (a keyset page: as fast on the last page as on the first,
    unlike `offset`, which reads every row it skips).
    """
    statement = select(Measurement).where(Measurement.device_id == device.id)
    if op_type is not None:
        statement = statement.where(Measurement.op_type == op_type)
    if bits is not None:
        statement = statement.where(Measurement.bits == bits)
    if after_id is not None:
        statement = statement.where(Measurement.id > after_id)
    statement = statement.order_by(Measurement.id).offset(offset)
    if limit is not None:
        statement = statement.limit(limit)
    yield from session.scalars(statement.execution_options(yield_per=1000))


def count_measurements(session: Session, device: Device, op_type: str | None = None, bits: int | None = None) -> int:
    """How many measurement rows the device has (of that op type and bit-width), from its tallies."""
    return sum(tally.measurements for tally in read_tallies(session, device.id)
               if (op_type is None or tally.op_type == op_type) and (bits is None or tally.bits == bits))


def iter_measured_medians(session: Session, device: Device) -> Iterator[tuple[str, dict[str, Any], float]]:
    """Yield (key hash, key, median ms) of the device's measurements in insertion order, as plain tuples.

    What loading a predictor reads: no ORM objects are built (they cost more than the row and its key).
    """
    statement = (
        select(Measurement.key_hash, Measurement.key, Measurement.median_ms)
        .where(Measurement.device_id == device.id)
        .order_by(Measurement.id)
    )
    yield from session.execute(statement.execution_options(yield_per=1000)).tuples()


def count_measurements_by_op(session: Session, device: Device) -> dict[str, int]:
    """Return the number of measurement rows per op type on the device (from its tallies, not its rows)."""
    counts: dict[str, int] = {}
    for tally in read_tallies(session, device.id):
        counts[tally.op_type] = counts.get(tally.op_type, 0) + tally.measurements
    return counts


def start_run(
    session: Session, device: Device, run_id: str, budget_minutes: float | None = None,
    runtime: dict[str, Any] | None = None, host: str | None = None,
) -> ProfilingRun:
    """Record a running profiling run; idempotent: an existing run id is returned unchanged.

    `runtime` and `host`: what the run measures with (RuntimeSpec.to_dict, predictor.runtime.optimizer.describe_host),
    kept with the run that every measurement names. Raises InvalidRecordError if the run id belongs to another device.
    """
    _check_identifier("run_id", run_id, 64)
    if budget_minutes is not None and (not _is_finite_number(budget_minutes) or budget_minutes <= 0):
        raise InvalidRecordError(f"budget_minutes must be a finite number > 0 or None, got {budget_minutes!r}")
    session.flush()
    table = ProfilingRun.__table__
    assert isinstance(table, Table)
    session.execute(
        dialect_insert(session, table)
        .values(
            run_id=run_id,
            device_id=device.id,
            started_at=utc_now(),
            status="running",
            budget_minutes=None if budget_minutes is None else float(budget_minutes),
            runtime=runtime,
            host=host,
        )
        .on_conflict_do_nothing(index_elements=[table.c.run_id])
    )
    run = session.scalars(select(ProfilingRun).where(ProfilingRun.run_id == run_id)).one()
    if run.device_id != device.id:
        raise InvalidRecordError(f"run {run_id!r} belongs to device id {run.device_id}, not {device.name!r}")
    return run


def get_run(session: Session, run_id: str) -> ProfilingRun | None:
    """Return the run with that id, or None."""
    return session.scalars(select(ProfilingRun).where(ProfilingRun.run_id == run_id)).one_or_none()


def _closed_error(run: ProfilingRun, change: str) -> RunClosedError:
    since = f" since {run.finished_at:%Y-%m-%d %H:%M:%S} UTC" if run.finished_at is not None else ""
    return RunClosedError(f"run {run.run_id!r} is {run.status}{since}: {change}")


def finish_run(
    session: Session, run_id: str, status: str, report: dict[str, Any] | None = None
) -> ProfilingRun:
    """Mark a run finished or killed, stamp finished_at and attach its report.

    Raises UnknownRunError for an unknown run id, InvalidRecordError for a status other than "finished" /
    "killed", and RunClosedError when the run was closed already with another status or report (the same
    request again is a retry: the run is returned unchanged).
    """
    if status not in _CLOSED_STATUSES:
        raise InvalidRecordError(f"status must be 'finished' or 'killed', got {status!r}")
    run = get_run(session, run_id)
    if run is None:
        raise UnknownRunError(f"unknown run {run_id!r}")
    new_report = None if report is None else dict(report)
    if run.status in _CLOSED_STATUSES:
        if run.status == status and run.report == new_report:
            return run
        raise _closed_error(run, "a closed run cannot change its status or report")
    run.status = status
    run.finished_at = utc_now()
    run.report = new_report
    session.flush()
    bump_state_version(session, run.device_id)
    return run


def update_run_report(session: Session, run_id: str, report: Mapping[str, Any]) -> ProfilingRun:
    """Replace a running run's report (progress so far: a killed run keeps what it had).

    Raises UnknownRunError for an unknown run id, RunClosedError when the run is finished or killed.
    """
    run = get_run(session, run_id)
    if run is None:
        raise UnknownRunError(f"unknown run {run_id!r}")
    if run.status in _CLOSED_STATUSES:
        raise _closed_error(run, "a closed run's report cannot change")
    run.report = dict(report)
    session.flush()
    bump_state_version(session, run.device_id)
    return run


def list_runs(session: Session, device: Device) -> list[ProfilingRun]:
    """Return the device's profiling runs, oldest first."""
    return list(
        session.scalars(
            select(ProfilingRun)
            .where(ProfilingRun.device_id == device.id)
            .order_by(ProfilingRun.started_at, ProfilingRun.id)
        )
    )


def save_regressor(
    session: Session,
    device: Device,
    op_type: str,
    model_text: str,
    metrics: dict[str, Any],
    data_version: str,
) -> Regressor:
    """Store the regressor for (device, op type), replacing any earlier one."""
    _check_identifier("op_type", op_type, 64)
    _check_identifier("data_version", data_version, 64)
    if not isinstance(model_text, str) or not model_text:
        raise InvalidRecordError("model_text must be a non-empty LightGBM text model")
    fields = {
        "model_text": model_text,
        "metrics": dict(metrics),
        "data_version": data_version,
        "trained_at": utc_now(),
    }
    session.flush()
    table = Regressor.__table__
    assert isinstance(table, Table)
    session.execute(
        dialect_insert(session, table)
        .values(device_id=device.id, op_type=op_type, **fields)
        .on_conflict_do_update(index_elements=[table.c.device_id, table.c.op_type], set_=fields)
    )
    bump_state_version(session, device.id)
    return session.scalars(
        select(Regressor)
        .where(Regressor.device_id == device.id, Regressor.op_type == op_type)
        .execution_options(populate_existing=True)
    ).one()


def load_regressors(session: Session, device: Device) -> dict[str, Regressor]:
    """Return the device's regressors keyed by op type."""
    regressors = session.scalars(select(Regressor).where(Regressor.device_id == device.id))
    return {regressor.op_type: regressor for regressor in regressors}


@dataclass(frozen=True)
class RegressorMetrics:
    """A stored regressor without its model text (which may be megabytes)."""

    op_type: str
    metrics: dict[str, Any]
    data_version: str
    trained_at: datetime


def list_regressor_metrics(session: Session, device: Device) -> dict[str, RegressorMetrics]:
    """The device's regressors' metrics keyed by op type, without reading their model texts."""
    rows = session.execute(
        select(Regressor.op_type, Regressor.metrics, Regressor.data_version, Regressor.trained_at)
        .where(Regressor.device_id == device.id).order_by(Regressor.op_type))
    return {op_type: RegressorMetrics(op_type, dict(metrics or {}), data_version, trained_at)
            for op_type, metrics, data_version, trained_at in rows}


@dataclass(frozen=True)
class RunSummary:
    """A profiling run without its report."""

    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None


def summarize_runs(session: Session, device: Device) -> tuple[int, RunSummary | None]:
    """How many runs the device has and its latest (by start), without reading their reports."""
    count = int(session.scalar(select(func.count()).select_from(ProfilingRun)
                               .where(ProfilingRun.device_id == device.id)) or 0)
    row = session.execute(
        select(ProfilingRun.run_id, ProfilingRun.status, ProfilingRun.started_at, ProfilingRun.finished_at)
        .where(ProfilingRun.device_id == device.id)
        .order_by(ProfilingRun.started_at.desc(), ProfilingRun.id.desc()).limit(1)).one_or_none()
    return count, None if row is None else RunSummary(*row)


def set_overhead(session: Session, device: Device, overhead: Mapping[str, Any]) -> Device:
    """Store the learned per-device overhead, e.g. {"per_run_ms": 0.02, "per_kernel_ms": 0.001}."""
    if not isinstance(overhead, Mapping) or not all(isinstance(name, str) for name in overhead):
        raise InvalidRecordError(f"overhead must be a dict with string keys, got {overhead!r}")
    for name, value in overhead.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidRecordError(f"overhead {name!r} must be finite, got {value!r}")
    own = _refetch_device(session, device)
    own.overhead = dict(overhead)
    session.flush()
    bump_state_version(session, own.id)
    return own


def add_validation(
    session: Session,
    device: Device,
    *,
    model_name: str,
    config_name: str,
    predicted_ms: float,
    measured_ms: float,
    scaled_ms: float | None = None,
) -> Validation:
    """Record a predicted-vs-measured end-to-end latency for one model and compression config.

    `scaled_ms`: the measurement in the device's baseline state, what the prediction is held against."""
    _check_identifier("model_name", model_name, 256)
    _check_identifier("config_name", config_name, 256)
    for field, value in (("predicted_ms", predicted_ms), ("measured_ms", measured_ms)):
        if not _is_finite_number(value) or value < 0:
            raise InvalidRecordError(f"{field} must be a finite number >= 0, got {value!r}")
    if scaled_ms is not None and (not _is_finite_number(scaled_ms) or scaled_ms < 0):
        raise InvalidRecordError(f"scaled_ms must be a finite number >= 0 or None, got {scaled_ms!r}")
    validation = Validation(
        device_id=device.id,
        model_name=model_name,
        config_name=config_name,
        predicted_ms=float(predicted_ms),
        measured_ms=float(measured_ms),
        scaled_ms=None if scaled_ms is None else float(scaled_ms),
    )
    session.add(validation)
    session.flush()
    return validation


def list_validations(session: Session, device: Device) -> list[Validation]:
    """Return the device's validations, oldest first."""
    return list(
        session.scalars(
            select(Validation)
            .where(Validation.device_id == device.id)
            .order_by(Validation.created_at, Validation.id)
        )
    )


@dataclass(frozen=True)
class StoredModelSummary:
    """An uploaded model without its kernel list (which may be megabytes)."""

    id: str
    name: str
    size_bytes: int
    created_at: datetime


def list_stored_models(session: Session, limit: int, offset: int = 0) -> tuple[list[StoredModelSummary], int]:
    """Uploaded models with kernels, newest first (a page of them), and how many there are in all."""
    complete = StoredModel.kernels.is_not(None)
    rows = session.execute(
        select(StoredModel.id, StoredModel.name, StoredModel.size_bytes, StoredModel.created_at)
        .where(complete)
        .order_by(StoredModel.created_at.desc(), StoredModel.id)
        .offset(offset)
        .limit(limit)
    )
    total = session.scalar(select(func.count()).select_from(StoredModel).where(complete)) or 0
    return [StoredModelSummary(*row) for row in rows], int(total)


def get_stored_model(session: Session, model_id: str) -> StoredModel | None:
    """Return the uploaded model with that sha256 hex id, or None."""
    return session.get(StoredModel, model_id)


def save_stored_model(
    session: Session,
    *,
    model_id: str,
    name: str,
    size_bytes: int,
    inputs: Any,
    kernels: Any | None = None,
) -> StoredModel:
    """Store an uploaded model's metadata; idempotent by content id (the existing row is returned).

    Kernels given for an existing row that has none are filled in.
    """
    if not isinstance(model_id, str) or not _SHA256_HEX.fullmatch(model_id):
        raise InvalidRecordError(f"model_id must be a lowercase sha256 hex digest, got {model_id!r}")
    _check_identifier("model name", name, 256)
    if not _is_int(size_bytes) or size_bytes < 0:
        raise InvalidRecordError(f"size_bytes must be an int >= 0, got {size_bytes!r}")
    session.flush()
    table = StoredModel.__table__
    assert isinstance(table, Table)
    session.execute(
        dialect_insert(session, table)
        .values(
            id=model_id,
            name=name,
            size_bytes=size_bytes,
            created_at=utc_now(),
            inputs=inputs,
            kernels=kernels,
        )
        .on_conflict_do_nothing(index_elements=[table.c.id])
    )
    stored = session.scalars(
        select(StoredModel).where(StoredModel.id == model_id).execution_options(populate_existing=True)
    ).one()
    if kernels is not None and stored.kernels is None:
        stored.kernels = kernels
        session.flush()
    return stored
