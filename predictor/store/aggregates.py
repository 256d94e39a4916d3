"""Per-device aggregates that uploads keep current: measured kernels, tallies and the versions loaders check.

Every upload that adds measurement rows (crud.add_measurements) folds them in, in its own transaction:

- `measured_kernels`: one row per (device, key) with the median of its runs' medians and the key's summary
  (predictor.store.summary), so loading a predictor reads one row per key and parses none;
- `measurement_tallies`: rows and distinct kernels per (device, op type, bit-width), for counts and pages;
- `devices.table_seq`: raised once per such upload, and written into every measured_kernels row it changed, so a
  loaded predictor reads only the rows it has not seen (`read_measured_rows(after_seq=...)`);
- `devices.state_version`: raised by every other change a predictor depends on (`bump_state_version`).

Uploads to one device are serialised by the row lock the table_seq update takes (PostgreSQL; SQLite serialises
all writers): the medians an upload recomputes see every run committed before it.
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import numpy as np
from sqlalchemy import String, Table, and_, any_, bindparam, case, func, literal, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from predictor.estimation.table import DIGEST_DTYPE, MeasuredRows, digest_of
from predictor.store.models import OTHER_KEY_HASH_POSTGRESQL, Device, MeasuredKernel, Measurement, MeasurementTally
from predictor.store.summary import KernelSummary, summarize_keys
from predictor.store.upsert import dialect_insert, insert_new_rows

__all__ = [
    "KernelPointRow",
    "KernelSample",
    "TableVersion",
    "Tally",
    "bump_state_version",
    "coverage_rows",
    "read_device_version",
    "read_measured_rows",
    "read_tallies",
    "read_table_version",
    "record_measurements",
    "sample_kernel_points",
    "shape_counts",
]

logger = logging.getLogger(__name__)

# Key hashes per IN (...) list: well below SQLite's bound-parameter limit.
_IN_CHUNK = 500
# Rows per fetch when reading measured kernels row by row (SQLite).
_FETCH_ROWS = 50_000
# PostgreSQL sends a device's table in parts of at most about this many kernels (by the key hash's first digits):
# libpq keeps its input buffer as large as the largest message it received for as long as the connection lives
# (pooled: the process's), and a part's packed columns are some 70 bytes a kernel as text.
_PART_KERNELS = 100_000


class _NewRow(Protocol):
    key: Any
    key_hash: str
    op_type: str
    bits: int
    median_ms: float
    summary: KernelSummary | None


@dataclass(frozen=True)
class TableVersion:
    """What a loaded predictor of a device was built from: compare with the store's before using it."""

    device_id: int
    # With the id, which SQLite gives again to a device registered after the last one was deleted.
    registered_at: datetime
    table_seq: int
    state_version: int


@dataclass(frozen=True)
class Tally:
    """Measurement rows and distinct kernels of one op type and bit-width on a device."""

    op_type: str
    bits: int
    measurements: int
    kernels: int


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_VERSION_COLUMNS = (Device.id, Device.created_at, Device.table_seq, Device.state_version)


def read_table_version(session: Session | Connection, device_name: str) -> TableVersion | None:
    """The device's identity, table sequence and state version; None when no device has that name."""
    row = session.execute(select(*_VERSION_COLUMNS).where(Device.name == device_name)).one_or_none()
    return None if row is None else TableVersion(int(row[0]), row[1], int(row[2]), int(row[3]))


def read_device_version(session: Session, device_id: int) -> TableVersion | None:
    """`read_table_version` of the device with that id."""
    row = session.execute(select(*_VERSION_COLUMNS).where(Device.id == device_id)).one_or_none()
    return None if row is None else TableVersion(int(row[0]), row[1], int(row[2]), int(row[3]))


def bump_state_version(session: Session, device_id: int) -> None:
    """Something a loaded predictor of the device depends on besides its table changed (runs, regressors, ...)."""
    session.execute(update(_table(Device)).where(_table(Device).c.id == device_id)
                    .values(state_version=_table(Device).c.state_version + 1))


def _run_medians(session: Session, device_id: int, hashes: Sequence[str]) -> dict[str, list[float]]:
    """Every run's median of each key (rows of the device's measurements)."""
    medians: dict[str, list[float]] = {}
    postgres = session.get_bind().dialect.name == "postgresql"
    # PostgreSQL: one array parameter (a statement text psycopg has seen before), not a list of 500 placeholders.
    chunks = [hashes] if postgres else list(_chunks(hashes))
    for chunk in chunks:
        matching = (Measurement.key_hash == any_(literal(list(chunk), ARRAY(String))) if postgres
                    else Measurement.key_hash.in_(chunk))
        for key_hash, median_ms in session.execute(select(Measurement.key_hash, Measurement.median_ms).where(
                Measurement.device_id == device_id, matching)):
            medians.setdefault(key_hash, []).append(float(median_ms))
    return medians


def record_measurements(session: Session, device_id: int, rows: Sequence[_NewRow]) -> None:
    """Fold newly inserted measurement rows (at most one per key) into the device's aggregates.

    Call it in the transaction that inserted them. Keys measured before get the median of all their runs'
    medians (read after taking the device's row lock); new keys get their summary.
    """
    if not rows:
        return
    rows = sorted(rows, key=lambda row: row.key_hash)
    # The work per key before the device's row lock: concurrent uploads to the device wait only for SQL.
    missing = [row for row in rows if row.summary is None]
    computed = dict(zip((row.key_hash for row in missing), summarize_keys([row.key for row in missing]), strict=True))
    summaries = [row.summary if row.summary is not None else computed[row.key_hash] for row in rows]
    devices = _table(Device)
    seq = int(session.execute(
        update(devices).where(devices.c.id == device_id).values(table_seq=devices.c.table_seq + 1)
        .returning(devices.c.table_seq)).scalar_one())
    kernels = _table(MeasuredKernel)
    values = [{
        "device_id": device_id, "key_hash": row.key_hash, "op_type": row.op_type, "bits": row.bits,
        "median_ms": float(row.median_ms), "runs": 1, "seq": seq,
        "bytes_moved": None if summary is None else summary.bytes_moved,
        "macs": None if summary is None else summary.macs,
        "sparsity": None if summary is None else summary.sparsity,
        "sparsity_pattern": None if summary is None else summary.sparsity_pattern,
        "shape_hash": None if summary is None else summary.shape_hash,
    } for row, summary in zip(rows, summaries, strict=True)]
    # New keys go in; a key already there (a conflict) was measured in another run: its median is recomputed.
    new = set(insert_new_rows(session, kernels, values, ("device_id", "key_hash"), "key_hash"))
    remeasured = [row.key_hash for row in rows if row.key_hash not in new]
    if remeasured:
        run_medians = _run_medians(session, device_id, remeasured)
        session.execute(
            update(kernels).where(kernels.c.device_id == device_id, kernels.c.key_hash == bindparam("target_hash"))
            .values(median_ms=bindparam("new_median"), runs=bindparam("new_runs"), seq=seq),
            [{"target_hash": key_hash, "new_median": statistics.median(run_medians[key_hash]),
              "new_runs": len(run_medians[key_hash])} for key_hash in remeasured])
    _add_to_tallies(session, device_id, rows, [row for row in rows if row.key_hash in new])


def _add_to_tallies(session: Session, device_id: int, rows: Sequence[_NewRow], new_rows: Sequence[_NewRow]) -> None:
    counts: dict[tuple[str, int], list[int]] = {}
    for row in rows:
        counts.setdefault((row.op_type, row.bits), [0, 0])[0] += 1
    for row in new_rows:
        counts[(row.op_type, row.bits)][1] += 1
    tallies = _table(MeasurementTally)
    insert = dialect_insert(session, tallies)
    session.execute(
        insert.values([{"device_id": device_id, "op_type": op_type, "bits": bits, "measurements": added,
                        "kernels": new} for (op_type, bits), (added, new) in sorted(counts.items())])
        .on_conflict_do_update(
            index_elements=[tallies.c.device_id, tallies.c.op_type, tallies.c.bits],
            set_={"measurements": tallies.c.measurements + insert.excluded.measurements,
                  "kernels": tallies.c.kernels + insert.excluded.kernels}))


def read_tallies(session: Session, device_id: int) -> list[Tally]:
    """The device's tallies by op type, then bit-width."""
    tallies = _table(MeasurementTally)
    rows = session.execute(
        select(tallies.c.op_type, tallies.c.bits, tallies.c.measurements, tallies.c.kernels)
        .where(tallies.c.device_id == device_id).order_by(tallies.c.op_type, tallies.c.bits))
    return [Tally(op_type, int(bits), int(measurements), int(kernels)) for op_type, bits, measurements, kernels in rows]


# ------------------------------------------------------------------------------------------------ reading rows
def read_measured_rows(session: Session, device_id: int, after_seq: int | None = None,
                       upto_seq: int | None = None) -> MeasuredRows:
    """The device's measured kernels as sorted arrays; only those changed after `after_seq` (up to `upto_seq`).

    PostgreSQL sends the columns as packed binary (one value per column, not a row per kernel): a million kernels
    arrive in about a second and make no Python object each. SQLite streams rows.
    """
    kernels = _table(MeasuredKernel)
    conditions = [kernels.c.device_id == device_id]
    if after_seq is not None:
        conditions.append(kernels.c.seq > after_seq)
    if upto_seq is not None:
        conditions.append(kernels.c.seq <= upto_seq)
    if session.get_bind().dialect.name == "postgresql":
        return _read_packed(session, device_id, after_seq, upto_seq)
    digests: list[bytes] = []
    numbers: list[tuple[float, float, float]] = []
    others: dict[str, tuple[float, float, float]] = {}
    statement = select(kernels.c.key_hash, kernels.c.median_ms, kernels.c.bytes_moved, kernels.c.macs).where(
        *conditions)
    result = session.execute(statement.execution_options(yield_per=_FETCH_ROWS))
    nan = float("nan")
    for key_hash, median_ms, bytes_moved, macs in result:
        row = (float(median_ms), nan if bytes_moved is None else float(bytes_moved),
               nan if macs is None else float(macs))
        digest = digest_of(key_hash)
        if digest is None:
            others[key_hash] = row
        else:
            digests.append(digest)
            numbers.append(row)
    values = np.array(numbers, dtype=np.float64).reshape(-1, 3)
    return MeasuredRows.from_arrays(np.array(digests, dtype=DIGEST_DTYPE), values[:, 0], values[:, 1], values[:, 2],
                                    others)


# One pass of the aggregate feeds all four columns the same rows in the same order; rows sorted once by the
# subquery usually arrive in that order (checked on arrival: MeasuredRows.from_arrays sorts any that do not).
_PACKED_QUERY = """
SELECT string_agg(decode(key_hash, 'hex'), ''::bytea),
       string_agg(float8send(median_ms), ''::bytea),
       string_agg(float8send(coalesce(bytes_moved, 'NaN'::float8)), ''::bytea),
       string_agg(float8send(coalesce(macs, 'NaN'::float8)), ''::bytea)
FROM (SELECT key_hash, median_ms, bytes_moved, macs FROM measured_kernels
      WHERE device_id = :device_id AND key_hash ~ '^[0-9a-f]{32}$' {conditions}
      ORDER BY key_hash COLLATE "C") AS ordered
"""
# Its condition is the partial index ix_measured_kernels_other_keys's, word for word: the index answers it.
_OTHERS_QUERY = f"""
SELECT key_hash, median_ms, bytes_moved, macs FROM measured_kernels
WHERE device_id = :device_id AND {OTHER_KEY_HASH_POSTGRESQL} {{conditions}}
"""


def _key_hash_ranges(kernels: int) -> list[tuple[str, str]]:
    """Bounds (low inclusive, high exclusive) of key-hash prefixes splitting `kernels` into parts of at most
    about _PART_KERNELS (key hashes are uniform); none for a small table, read whole."""
    digits = 0
    while kernels > _PART_KERNELS * 16 ** digits:
        digits += 1
    if digits == 0:
        return []
    count = 16 ** digits
    bounds = [format(index, f"0{digits}x") for index in range(count)]
    return list(zip(bounds, [*bounds[1:], "g"], strict=True))


def _read_packed(session: Session, device_id: int, after_seq: int | None, upto_seq: int | None) -> MeasuredRows:
    params: dict[str, Any] = {"device_id": device_id}
    conditions = ""
    if after_seq is not None:
        conditions += " AND seq > :after_seq"
        params["after_seq"] = after_seq
    if upto_seq is not None:
        conditions += " AND seq <= :upto_seq"
        params["upto_seq"] = upto_seq
    ranges: list[str] = [""]
    if after_seq is None:
        total = session.scalar(select(func.coalesce(func.sum(MeasurementTally.kernels), 0))
                               .where(MeasurementTally.device_id == device_id)) or 0
        ranges = [f" AND key_hash >= '{low}' AND key_hash < '{high}'" for low, high in _key_hash_ranges(total)] or [""]
    # Each part's bytes become arrays at once (a part's packed text is several times its arrays' size). The parts
    # come in key-hash order, each sorted by PostgreSQL, so the rows usually need no sort here.
    columns: list[list[np.ndarray]] = [[], [], [], []]
    for bounds in ranges:
        row = session.execute(text(_PACKED_QUERY.replace("{conditions}", conditions + bounds)), params).one()
        if row[0] is not None:
            columns[0].append(np.frombuffer(row[0], dtype=DIGEST_DTYPE).copy())
            for index in (1, 2, 3):
                columns[index].append(np.frombuffer(row[index], dtype=">f8").astype(np.float64))
        del row
    others: dict[str, tuple[float, float, float]] = {}
    nan = float("nan")
    for key_hash, median_ms, bytes_moved, macs in session.execute(
            text(_OTHERS_QUERY.replace("{conditions}", conditions)), params):
        others[key_hash] = (float(median_ms), nan if bytes_moved is None else float(bytes_moved),
                            nan if macs is None else float(macs))

    def joined(index: int) -> np.ndarray:
        parts, columns[index] = columns[index], []  # the parts go as soon as they are joined
        if not parts:
            return np.zeros(0, dtype=DIGEST_DTYPE if index == 0 else np.float64)
        return np.concatenate(parts)

    return MeasuredRows.from_arrays(joined(0), joined(1), joined(2), joined(3), others, presorted=True)


# ------------------------------------------------------------------------------------------------ dashboard
@dataclass(frozen=True)
class KernelPointRow:
    """One measured kernel as the dashboard's charts plot it."""

    op_type: str
    bits: int
    sparsity: float
    sparsity_pattern: str
    macs: float
    latency_ms: float
    runs: int
    shape_hash: str


def coverage_rows(session: Session, device_id: int) -> list[tuple[str, int, float | None, int, float | None,
                                                                   float | None]]:
    """(op type, bits, sparsity, kernels, smallest MACs, largest MACs) per group of the device's measured kernels."""
    kernels = _table(MeasuredKernel)
    rows = session.execute(
        select(kernels.c.op_type, kernels.c.bits, kernels.c.sparsity, func.count(), func.min(kernels.c.macs),
               func.max(kernels.c.macs))
        .where(kernels.c.device_id == device_id)
        .group_by(kernels.c.op_type, kernels.c.bits, kernels.c.sparsity))
    return [(op_type, int(bits), sparsity, int(count), low, high)
            for op_type, bits, sparsity, count, low, high in rows]


def shape_counts(session: Session, device_id: int) -> dict[str, int]:
    """Distinct kernel shapes (predictor.store.summary.shape_hash_of) per op type of the device."""
    kernels = _table(MeasuredKernel)
    rows = session.execute(
        select(kernels.c.op_type, func.count(kernels.c.shape_hash.distinct()))
        .where(kernels.c.device_id == device_id).group_by(kernels.c.op_type))
    return {op_type: int(count) for op_type, count in rows}


@dataclass(frozen=True)
class KernelSample:
    """Measured kernels the dashboard plots: a sample of whole shapes, and counts over all of the device's."""

    points: list[KernelPointRow]
    # Share of the device's kernel shapes in the sample (1.0: all of them).
    share: float
    # The device's kernels with a summary, and those with MACs and a latency above 0 (what a log-log plot shows).
    kernels: int
    plottable: int


def sample_kernel_points(session: Session, device_id: int, max_points: int) -> KernelSample:
    """About `max_points` of the device's measured kernels, every kernel of each shape taken.

    Shapes are taken by their hash (uniform, and the same every time), so the fp32, int8 and sparse kernels of a
    shape are taken together and speedups can still be paired.
    """
    kernels = _table(MeasuredKernel)
    described = [kernels.c.device_id == device_id, kernels.c.shape_hash.is_not(None)]
    total, plottable = session.execute(
        select(func.count(), func.coalesce(func.sum(case((and_(kernels.c.macs > 0, kernels.c.median_ms > 0), 1),
                                                         else_=0)), 0))
        .where(*described)).one()
    conditions = list(described)
    share = 1.0
    if total > max_points:
        share = max_points / total
        # Hashes below this 8-hex-digit bound are that share of all hashes.
        conditions.append(kernels.c.shape_hash < f"{int(share * 16**8):08x}")
    rows = session.execute(
        select(kernels.c.op_type, kernels.c.bits, kernels.c.sparsity, kernels.c.sparsity_pattern, kernels.c.macs,
               kernels.c.median_ms, kernels.c.runs, kernels.c.shape_hash)
        .where(*conditions).order_by(kernels.c.shape_hash, kernels.c.key_hash))
    points = [KernelPointRow(op_type, int(bits), float(sparsity), str(pattern), float(macs), float(median_ms),
                             int(runs), str(shape_hash))
              for op_type, bits, sparsity, pattern, macs, median_ms, runs, shape_hash in rows]
    return KernelSample(points=points, share=share, kernels=int(total), plottable=int(plottable))
