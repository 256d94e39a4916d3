"""A device's measurement table: idempotent batch uploads per run, and paged reads as JSON or CSV."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from predictor.kernels.features import features_matrix
from predictor.kernels.keys import KernelKey
from predictor.store import (
    MeasurementConflict,
    MeasurementIn,
    add_measurements,
    count_measurements,
    find_measurement_conflicts,
    get_device,
    get_run,
    iter_measurements,
)
from predictor.store.summary import summarize_kernel_keys
from service.api.deps import ReadAccess, SessionDep, WriteAccess
from service.api.problems import HTTPProblem, ProblemCode
from service.api.schemas import (
    MAX_LISTED_CONFLICTS,
    MeasurementConflictPublic,
    MeasurementCreate,
    MeasurementPublic,
    MeasurementsCreate,
    MeasurementsInserted,
    MeasurementsPublic,
)

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/devices/{name}/measurements", tags=["measurements"], dependencies=[ReadAccess])

# Offsets past a 32-bit integer overflow SQLite/PostgreSQL binds; no table is that long.
_MAX_OFFSET = 2**31 - 1
_MAX_BITS = 64
_CSV_COLUMNS = ("run_id", "key_hash", "op_type", "bits", "median_ms", "p10_ms", "p90_ms", "repeats",
                "created_at", "key")
# A text cell starting with one of these is a formula to spreadsheet programs (=HYPERLINK(...), +cmd, @SUM).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


# Conflicting keys named in an answer's message (its `conflicting` list holds more).
_CONFLICTS_IN_MESSAGE = 5


def _unprocessable(detail: str) -> HTTPProblem:
    return HTTPProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, ProblemCode.INVALID_MEASUREMENT, detail)


def _measurements_in(rows: list[MeasurementCreate]) -> list[MeasurementIn]:
    """The store's rows of validated rows; 422 naming the first row whose key the feature pipeline cannot use.

    A stored key must be usable by training, prediction and the dashboard: its summary (features included) is
    derived now, for all rows at once, and handed to the store, which keeps it beside the key.
    """
    keys = [KernelKey.from_dict(row.key.model_dump()) for row in rows]
    summaries = summarize_kernel_keys(keys)
    for index, (key, summary) in enumerate(zip(keys, summaries, strict=True)):
        if summary is None:
            raise _unprocessable(f"measurements[{index}].key: not a usable kernel key ({_why_unusable(key)})")
    return [MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                          median_ms=row.median_ms, p10_ms=row.p10_ms, p90_ms=row.p90_ms, repeats=row.repeats,
                          summary=summary)
            for key, row, summary in zip(keys, rows, summaries, strict=True)]


def _why_unusable(key: KernelKey) -> str:
    """What the feature pipeline says of a key it cannot describe."""
    try:
        with np.errstate(all="ignore"):
            work = features_matrix([key], cached=False)
    except Exception as exc:  # the pipeline's own words, whatever they are
        return f"{type(exc).__name__}: {exc}"
    return "its work (bytes moved, MACs) is not finite" if not np.isfinite(work).all() else "no features"


@router.post("", response_model=MeasurementsInserted, dependencies=[WriteAccess],
             responses={404: {"description": "unknown device"}, 409: {"description": "the run is finished or killed"},
                        422: {"description": "a bad row; nothing written"}})
def create_measurements(name: str, body: MeasurementsCreate, session: SessionDep) -> MeasurementsInserted:
    """Append a batch of one run; idempotent per (run_id, key). Any bad row rejects the whole batch.

    A row repeating a stored (run, key) with another median is not stored: the answer counts such conflicts, lists
    the first ones and names their keys in `message`. A finished or killed run takes no new rows (409); repeating
    rows it has is still a 200.
    """
    device = get_device(session, name)
    rows = _measurements_in(body.measurements)
    try:
        inserted = add_measurements(session, device, body.run_id, rows)
    except ValueError as exc:
        raise _unprocessable(str(exc)) from exc
    run = get_run(session, body.run_id)
    if inserted and run is not None and run.device_id == device.id and run.status != "running":
        session.rollback()
        raise HTTPProblem(status.HTTP_409_CONFLICT, ProblemCode.RUN_CLOSED,
                          f"run {body.run_id!r} is {run.status}: it takes no new measurements; "
                          "upload them under a new run id")
    conflicts = find_measurement_conflicts(session, device, body.run_id, rows)
    # The device's aggregates were updated with the rows (predictor.store.aggregates): every process's cached
    # predictor takes them in before its next answer.
    session.commit()
    message = _conflicts_message(body.run_id, conflicts) if conflicts else None
    if message:
        logger.warning("device %r: %s", name, message)
    listed = [MeasurementConflictPublic(**dataclasses.asdict(conflict))
              for conflict in conflicts[:MAX_LISTED_CONFLICTS]]
    return MeasurementsInserted(
        inserted=inserted, duplicates=len(rows) - inserted, conflicts=len(conflicts),
        first_conflict=listed[0] if listed else None, conflicting=listed, message=message)


def _conflicts_message(run_id: str, conflicts: list[MeasurementConflict]) -> str:
    """One line naming the conflicting keys (the first few) with both medians."""
    named = "; ".join(f"{conflict.op_type} key {conflict.key_hash}: stored {conflict.stored_median_ms:.6g} ms, sent "
                      f"{conflict.sent_median_ms:.6g} ms" for conflict in conflicts[:_CONFLICTS_IN_MESSAGE])
    more = f"; and {len(conflicts) - _CONFLICTS_IN_MESSAGE} more" if len(conflicts) > _CONFLICTS_IN_MESSAGE else ""
    return (f"{len(conflicts)} measurement(s) of run {run_id!r} repeat a stored (run, key) with another median and "
            f"were not stored (the stored median is kept): {named}{more}")


def _text_cell(text: str) -> str:
    """Text that a spreadsheet shows as text: a leading formula character gets a quote before it (OWASP)."""
    return f"'{text}" if text.startswith(_FORMULA_PREFIXES) else text


def _csv(rows: list[MeasurementPublic]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for row in rows:
        writer.writerow([_text_cell(row.run_id), _text_cell(row.key_hash), _text_cell(row.op_type), row.bits,
                         repr(row.median_ms), repr(row.p10_ms), repr(row.p90_ms), row.repeats,
                         row.created_at.isoformat(),
                         _text_cell(json.dumps(row.key, sort_keys=True, separators=(",", ":")))])
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
    after: Annotated[int | None, Query(ge=0, le=_MAX_OFFSET,
                                       description="the previous page's next_after: rows after it (keyset page)")
                     ] = None,
    format: Literal["json", "csv"] = "json",  # noqa: A002 - the query parameter's public name
) -> MeasurementsPublic | Response:
    """One page of the device's table in insertion order, optionally filtered by op type and bits.

    Page with `after` (each answer's next_after; a CSV answer's X-Next-After header): every page costs the same
    however deep into a large table it is. `offset` still works, but reads every row it skips.
    """
    device = get_device(session, name)
    measurements = list(iter_measurements(session, device, op_type=op_type, bits=bits, limit=limit, offset=offset,
                                          after_id=after))
    next_after = measurements[-1].id if len(measurements) == limit else None
    rows = [MeasurementPublic.model_validate(m) for m in measurements]
    if format == "csv":
        headers = {"Content-Disposition": f'attachment; filename="{device.id}-measurements.csv"'}
        if next_after is not None:
            headers["X-Next-After"] = str(next_after)
        return Response(_csv(rows), media_type="text/csv", headers=headers)
    return MeasurementsPublic(data=rows, count=count_measurements(session, device, op_type, bits), limit=limit,
                              offset=offset, next_after=next_after)
