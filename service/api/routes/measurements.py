"""A device's measurement table: idempotent batch uploads per run, and paged reads as JSON or CSV."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from predictor.features import features_matrix
from predictor.kernels import KernelKey
from predictor.store import Device, Measurement, MeasurementIn, add_measurements, get_device, iter_measurements
from service.api.deps import PredictionsDep, ReadAccess, SessionDep, WriteAccess
from service.api.schemas import (
    MeasurementCreate,
    MeasurementPublic,
    MeasurementsCreate,
    MeasurementsInserted,
    MeasurementsPublic,
)

__all__ = ["router"]

router = APIRouter(prefix="/devices/{name}/measurements", tags=["measurements"], dependencies=[ReadAccess])

_KEY_FIELDS = frozenset(KernelKey(op_type="x", inputs=(), outputs=()).to_dict())
_MAX_OP_TYPE_CHARS = 64
# Bit-widths are 1..64; anything larger would overflow the integer column (a 500 instead of a 422).
_MAX_BITS = 64
# Offsets past a 32-bit integer overflow SQLite/PostgreSQL binds; no table is that long.
_MAX_OFFSET = 2**31 - 1
_CSV_COLUMNS = ("run_id", "key_hash", "op_type", "bits", "median_ms", "p10_ms", "p90_ms", "repeats",
                "created_at", "key")


def _unprocessable(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=detail)


def _parse_key(index: int, data: Mapping[str, Any]) -> KernelKey:
    """The canonical key of one uploaded row; 422 naming the row for anything malformed."""
    where = f"measurements[{index}].key"
    unknown = sorted(set(data) - _KEY_FIELDS)
    if unknown:
        raise _unprocessable(f"{where}: unknown field(s) {', '.join(unknown)}; expected {sorted(_KEY_FIELDS)}")
    op_type = data.get("op_type")
    if not isinstance(op_type, str) or not op_type or len(op_type) > _MAX_OP_TYPE_CHARS:
        raise _unprocessable(f"{where}.op_type must be a non-empty string of at most {_MAX_OP_TYPE_CHARS} chars")
    if _has_non_finite(data):
        raise _unprocessable(f"{where}: NaN or infinite number in the key")
    try:
        key = KernelKey.from_dict(data)
        key_hash = key.key_hash
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise _unprocessable(f"{where}: malformed kernel key ({type(exc).__name__}: {exc})") from exc
    if not 1 <= key.bits <= _MAX_BITS:
        raise _unprocessable(f"{where}.bits must be within [1, {_MAX_BITS}], got {key.bits}")
    if not 0.0 <= key.sparsity <= 1.0:
        raise _unprocessable(f"{where}.sparsity must be within [0, 1], got {key.sparsity}")
    assert key_hash
    # A stored key must be usable by training, prediction and the dashboard: derive its features now (not
    # cached: every uploaded key would sit in the process-wide feature cache until 65,536 others pushed it out).
    try:
        with np.errstate(all="ignore"):
            features_matrix([key], cached=False)
    except Exception as exc:  # any failure here would otherwise surface later, as a 500 elsewhere
        raise _unprocessable(f"{where}: not a usable kernel key ({type(exc).__name__}: {exc})") from exc
    return key


def _has_non_finite(value: Any) -> bool:
    """Whether a JSON value holds NaN or an infinity anywhere (Python's json parser accepts both)."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(item) for item in value)
    return False


def _measurement_in(index: int, row: MeasurementCreate) -> MeasurementIn:
    key = _parse_key(index, row.key)
    return MeasurementIn(
        key=key.to_dict(),
        key_hash=key.key_hash,
        op_type=key.op_type,
        bits=key.bits,
        median_ms=row.median_ms,
        p10_ms=row.p10_ms,
        p90_ms=row.p90_ms,
        repeats=row.repeats,
    )


@router.post("", response_model=MeasurementsInserted, dependencies=[WriteAccess],
             responses={404: {"description": "unknown device"}, 422: {"description": "a bad row; nothing written"}})
def create_measurements(name: str, body: MeasurementsCreate, session: SessionDep,
                        predictions: PredictionsDep) -> MeasurementsInserted:
    """Append a batch of one run; idempotent per (run_id, key). Any bad row rejects the whole batch."""
    device = get_device(session, name)
    rows = [_measurement_in(index, row) for index, row in enumerate(body.measurements)]
    try:
        inserted = add_measurements(session, device, body.run_id, rows)
    except ValueError as exc:
        raise _unprocessable(str(exc)) from exc
    session.commit()
    if inserted:
        predictions.mark_stale(name)
    return MeasurementsInserted(inserted=inserted, duplicates=len(rows) - inserted)


def _count(session: Session, device: Device, op_type: str | None, bits: int | None) -> int:
    statement = select(func.count(Measurement.id)).where(Measurement.device_id == device.id)
    if op_type is not None:
        statement = statement.where(Measurement.op_type == op_type)
    if bits is not None:
        statement = statement.where(Measurement.bits == bits)
    return int(session.scalar(statement) or 0)


def _csv(rows: list[MeasurementPublic]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for row in rows:
        writer.writerow([row.run_id, row.key_hash, row.op_type, row.bits, repr(row.median_ms), repr(row.p10_ms),
                         repr(row.p90_ms), row.repeats, row.created_at.isoformat(),
                         json.dumps(row.key, sort_keys=True, separators=(",", ":"))])
    return buffer.getvalue()


@router.get("", response_model=MeasurementsPublic,
            responses={200: {"content": {"text/csv": {}}}, 404: {"description": "unknown device"}})
def read_measurements(
    name: str,
    session: SessionDep,
    op_type: str | None = None,
    bits: Annotated[int | None, Query(ge=1, le=_MAX_BITS)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET)] = 0,
    format: Literal["json", "csv"] = "json",  # noqa: A002 - the query parameter's public name
) -> MeasurementsPublic | Response:
    """One page of the device's table in insertion order, optionally filtered by op type and bits."""
    device = get_device(session, name)
    rows = [MeasurementPublic.model_validate(m)
            for m in iter_measurements(session, device, op_type=op_type, bits=bits, limit=limit, offset=offset)]
    if format == "csv":
        return Response(_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{device.id}-measurements.csv"'})
    return MeasurementsPublic(data=rows, count=_count(session, device, op_type, bits), limit=limit, offset=offset)
