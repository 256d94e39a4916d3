"""The per-device aggregates uploads keep (measured kernels, tallies, versions) against the raw rows they summarise,
on SQLite and PostgreSQL; migration 0004 fills them from rows stored before it."""
from __future__ import annotations

import json
import random
import statistics
import threading
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

import predictor.store.aggregates as aggregates
from predictor.estimation.table import digest_of
from predictor.kernels.keys import KernelKey
from predictor.store import (
    Device,
    MeasuredKernel,
    Measurement,
    MeasurementIn,
    add_measurements,
    count_measurements,
    count_measurements_by_op,
    create_store_engine,
    downgrade_schema,
    finish_run,
    iter_measurements,
    read_measured_rows,
    read_tallies,
    register_device,
    save_regressor,
    session_factory,
    session_scope,
    set_overhead,
    start_run,
    table_version,
    update_run_report,
    upgrade_schema,
)
from predictor.store.models import OTHER_KEY_HASH_POSTGRESQL, OTHER_KEY_HASH_SQLITE
from predictor.store.summary import shape_hash_of, summarize_keys
from tests.factories import kernel_measurement_rows

UNREADABLE = {"op": "Conv", "shape": [1, 3]}  # a hand-written key: no kernel key, no summary


def _rows(count: int, seed: int = 0, scale: float = 1.0) -> list[MeasurementIn]:
    rows = []
    for row in kernel_measurement_rows(count, seed):
        key = KernelKey.from_dict(row["key"])  # type: ignore[arg-type]
        ms = float(row["median_ms"]) * scale  # type: ignore[arg-type]
        rows.append(MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                                  median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, repeats=10))
    return rows


def _unreadable(index: int, ms: float = 1.0) -> MeasurementIn:
    return MeasurementIn(key=dict(UNREADABLE, index=index), key_hash=f"{index:064x}", op_type="Conv", bits=32,
                         median_ms=ms, p10_ms=ms, p90_ms=ms, repeats=1)


def _new_device(session: Session, name: str = "agg-cpu") -> Device:
    return register_device(session, name=name, backend="onnxruntime", execution_provider="CPUExecutionProvider",
                           runtime_version="1.0", threads=1, host="test")


@pytest.fixture
def device(factory: sessionmaker[Session]) -> Device:
    with session_scope(factory) as session:
        return _new_device(session)


def _from_raw_rows(session: Session, device: Device) -> dict[str, tuple[float, int]]:
    """(median of run medians, runs) per key, from the measurement rows themselves."""
    medians: defaultdict[str, list[float]] = defaultdict(list)
    for key_hash, median_ms in session.execute(select(Measurement.key_hash, Measurement.median_ms)
                                               .where(Measurement.device_id == device.id)):
        medians[key_hash].append(median_ms)
    return {key_hash: (statistics.median(values), len(values)) for key_hash, values in medians.items()}


def _assert_same(actual: dict[str, tuple[Any, ...]], expected: dict[str, tuple[Any, ...]]) -> None:
    """Equal keys and values, floats up to rounding (NaN equal to NaN)."""
    assert actual.keys() == expected.keys()
    for key_hash, values in expected.items():
        assert actual[key_hash] == pytest.approx(values, nan_ok=True), key_hash


def _aggregate(session: Session, device: Device) -> dict[str, tuple[float, int]]:
    return {row.key_hash: (row.median_ms, row.runs) for row in session.scalars(
        select(MeasuredKernel).where(MeasuredKernel.device_id == device.id))}


def test_measured_kernels_and_tallies_equal_what_the_raw_rows_give(factory: sessionmaker[Session],
                                                                  device: Device) -> None:
    """Runs measuring overlapping keys, retried batches, an unreadable key: the aggregates stay the raw rows' sums."""
    first, second, third = _rows(120), _rows(60, scale=2.0), _rows(30, scale=5.0)
    with session_scope(factory) as session:
        other = _new_device(session, "other-cpu")
        add_measurements(session, device, "run-1", first[:80] + [_unreadable(1)])
        add_measurements(session, device, "run-1", first)  # a retry with more rows: only the new ones count
        add_measurements(session, device, "run-2", second + [_unreadable(1, 3.0)])
        add_measurements(session, other, "run-3", third)  # another device's rows stay its own
    with session_scope(factory) as session:
        add_measurements(session, device, "run-3", third)
    with session_scope(factory) as session:
        expected = _from_raw_rows(session, device)
        _assert_same(_aggregate(session, device), expected)
        assert len(expected) == 121 and expected[first[0].key_hash] == (pytest.approx(first[0].median_ms * 2), 3)
        kernels = {row.key_hash: row for row in session.scalars(select(MeasuredKernel).where(
            MeasuredKernel.device_id == device.id))}
        summaries = summarize_keys([row.key for row in first])
        for row, summary in zip(first, summaries, strict=True):
            stored = kernels[row.key_hash]
            assert summary is not None and (stored.op_type, stored.bits) == (row.op_type, row.bits)
            assert (stored.bytes_moved, stored.macs, stored.sparsity, stored.sparsity_pattern, stored.shape_hash) == (
                summary.bytes_moved, summary.macs, summary.sparsity, summary.sparsity_pattern, summary.shape_hash)
        unreadable = kernels[f"{1:064x}"]
        assert (unreadable.median_ms, unreadable.runs, unreadable.bytes_moved, unreadable.shape_hash) == (
            2.0, 2, None, None)
        raw_counts: defaultdict[tuple[str, int], int] = defaultdict(int)
        for op_type, bits in session.execute(select(Measurement.op_type, Measurement.bits)
                                             .where(Measurement.device_id == device.id)):
            raw_counts[(op_type, bits)] += 1
        tallies = read_tallies(session, device.id)
        assert {(t.op_type, t.bits): t.measurements for t in tallies} == raw_counts
        assert sum(t.kernels for t in tallies) == len(expected)
        assert count_measurements(session, device) == sum(raw_counts.values()) == 80 + 1 + 40 + 60 + 1 + 30
        assert count_measurements(session, device, op_type="Gemm") == raw_counts[("Gemm", 32)]
        assert count_measurements(session, device, op_type="QLinearConv", bits=8) == raw_counts[("QLinearConv", 8)]
        assert sum(count_measurements_by_op(session, device).values()) == sum(raw_counts.values())


@pytest.mark.postgres
def test_concurrent_runs_of_one_key_keep_its_median_of_all_runs(postgres_url: str) -> None:
    """Agents uploading the same keys in different runs at once: each key's median covers every run."""
    engine = create_store_engine(postgres_url)
    upgrade_schema(engine)
    factory = session_factory(engine)
    with session_scope(factory) as session:
        device = _new_device(session)
    runs = 6
    barrier = threading.Barrier(runs)
    errors: list[BaseException] = []

    def upload(run: int) -> None:
        rows = _rows(200, scale=1.0 + run)
        random.Random(run).shuffle(rows)
        try:
            barrier.wait(timeout=30)
            with session_scope(factory) as session:
                add_measurements(session, device, f"run-{run}", rows)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(run,)) for run in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    try:
        assert not errors, errors
        with session_scope(factory) as session:
            expected = _from_raw_rows(session, device)
            assert all(runs_of == runs for _, runs_of in expected.values())
            _assert_same(_aggregate(session, device), expected)
            assert sum(t.kernels for t in read_tallies(session, device.id)) == 200
            assert table_version(session, device.name).table_seq == runs
    finally:
        engine.dispose()


def test_versions_change_with_what_a_predictor_reads(factory: sessionmaker[Session], device: Device) -> None:
    """The table sequence counts uploads that added rows; the state version every other write a predictor reads."""

    def version() -> tuple[int, int]:
        with session_scope(factory) as session:
            current = table_version(session, device.name)
            assert current.device_id == device.id
            return current.table_seq, current.state_version

    assert version() == (0, 0)
    rows = _rows(10)
    with session_scope(factory) as session:
        start_run(session, device, "run-1")
        add_measurements(session, device, "run-1", rows)
    assert version() == (1, 0)
    with session_scope(factory) as session:
        assert add_measurements(session, device, "run-1", rows) == 0
    assert version() == (1, 0), "a retried upload changes nothing"
    changes = [
        lambda session: update_run_report(session, "run-1", {"measured_per_op": {"Gemm": 3}}),
        lambda session: finish_run(session, "run-1", "finished", {"flat_axes": {"Gemm": ["sparsity"]}}),
        lambda session: save_regressor(session, device, "Gemm", "tree", {}, "v1"),
        lambda session: set_overhead(session, device, {"per_run_ms": 0.1}),
        lambda session: register_device(session, name=device.name, backend="onnxruntime",
                                        execution_provider="CPUExecutionProvider", runtime_version="1.0", threads=1,
                                        host="test", kernel_profile={"backend": "onnxruntime"}),
    ]
    for expected_state, change in enumerate(changes, start=1):
        with session_scope(factory) as session:
            change(session)
        assert version() == (1, expected_state)
    with session_scope(factory) as session:
        register_device(session, name=device.name, backend="onnxruntime", execution_provider="CPUExecutionProvider",
                        runtime_version="1.0", threads=1, host="test", kernel_profile={"backend": "onnxruntime"})
    assert version() == (1, len(changes)), "registering again with the same profile changes nothing"


def test_key_hash_ranges_split_by_prefix_into_parts_of_bounded_size() -> None:
    assert aggregates._key_hash_ranges(aggregates._PART_KERNELS) == []
    sixteen = aggregates._key_hash_ranges(aggregates._PART_KERNELS + 1)
    assert sixteen[0] == ("0", "1") and sixteen[9] == ("9", "a") and sixteen[-1] == ("f", "g") and len(sixteen) == 16
    many = aggregates._key_hash_ranges(16 * aggregates._PART_KERNELS + 1)
    assert len(many) == 256 and many[0] == ("00", "01") and many[15] == ("0f", "10") and many[-1] == ("ff", "g")
    assert all(high == following[0] for (_, high), following in zip(many, many[1:], strict=False))


def _as_dict(rows: Any) -> dict[str, tuple[float, float, float]]:
    hashes = [bytes(d).ljust(16, b"\0").hex() for d in rows.digests] + list(rows.other_hashes)
    values = zip(rows.all_medians.tolist(), rows.all_bytes_moved.tolist(), rows.all_macs.tolist(), strict=True)
    return dict(zip(hashes, values, strict=True))


@pytest.mark.parametrize("part_kernels", [100_000, 10, 1])
def test_read_measured_rows_all_and_since_a_sequence(factory: sessionmaker[Session], device: Device,
                                                     part_kernels: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sorted digests with their medians and work; a delta holds only the keys changed after the sequence.

    PostgreSQL sends 111 kernels whole, in 16 parts (at most 10 a part) or in 256 (at most 1)."""
    monkeypatch.setattr(aggregates, "_PART_KERNELS", part_kernels)
    first = _rows(100)
    with session_scope(factory) as session:
        add_measurements(session, device, "run-1", first + [_unreadable(7)])
    with session_scope(factory) as session:
        seq = table_version(session, device.name).table_seq
        add_measurements(session, device, "run-2", _rows(110, scale=3.0)[90:])  # 10 re-measured, 10 new
    with session_scope(factory) as session:
        everything = read_measured_rows(session, device.id)
        delta = read_measured_rows(session, device.id, after_seq=seq)
        none = read_measured_rows(session, device.id, after_seq=seq, upto_seq=seq)
        raw = _from_raw_rows(session, device)
        before = read_measured_rows(session, device.id, upto_seq=seq)  # the 20 changed since are not in it
    assert len(everything) == 111 and len(delta) == 20 and len(none) == 0
    assert list(everything.digests) == sorted(everything.digests)
    summaries = {row.key_hash: summary for row, summary in zip(first, summarize_keys([r.key for r in first]),
                                                                   strict=True)}
    stored = _as_dict(everything)
    assert {key_hash: values[0] for key_hash, values in stored.items()} == pytest.approx(
        {key_hash: median for key_hash, (median, _) in raw.items()})
    for key_hash, summary in summaries.items():
        assert summary is not None and stored[key_hash][1:] == (summary.bytes_moved, summary.macs)
    assert np.isnan(stored[f"{7:064x}"][1]) and everything.other_hashes == (f"{7:064x}",)
    changed = _as_dict(delta)
    assert set(changed) == {row.key_hash for row in _rows(110)[90:]}
    assert all(changed[h][0] == stored[h][0] for h in changed)
    assert len(before) == 91
    _assert_same(_as_dict(before.merged(delta)), stored)
    assert everything.positions([first[3].key_hash, f"{7:064x}", "f" * 32]) == [
        int(np.flatnonzero(everything.digests == np.array([digest_of(first[3].key_hash)], dtype="S16"))[0]),
        len(everything.digests), None]


def test_keyset_pages_walk_the_table_in_insertion_order(factory: sessionmaker[Session], device: Device) -> None:
    rows = _rows(50)
    with session_scope(factory) as session:
        add_measurements(session, device, "run-1", rows)
        everything = [m.id for m in iter_measurements(session, device)]
        gemms = [m.id for m in iter_measurements(session, device, op_type="Gemm")]
        pages: list[int] = []
        after: int | None = None
        while True:
            page = [m.id for m in iter_measurements(session, device, limit=7, after_id=after)]
            pages += page
            if len(page) < 7:
                break
            after = page[-1]
        assert pages == everything == sorted(everything) and len(everything) == 50
        after_gemm = [m.id for m in iter_measurements(session, device, op_type="Gemm", after_id=gemms[4], limit=3)]
        assert after_gemm == gemms[5:8]


def test_shape_hash_pairs_runtime_variants_of_one_layer() -> None:
    """fp32, int8 and sparse kernels of a layer share a shape; another size does not."""
    def conv(cin: int, op_type: str = "NchwcConv", **changes: Any) -> KernelKey:
        return KernelKey.from_dict({"op_type": op_type, "inputs": [[1, cin, 8, 8]], "outputs": [[1, 32, 8, 8]],
                                    "weight": [32, cin, 3, 3], "attrs": {"group": 1, "strides": [1, 1]}, **changes})

    base = shape_hash_of(conv(16))
    assert shape_hash_of(conv(16, "QLinearConv", bits=8, dtype="uint8")) == base
    assert shape_hash_of(conv(16, sparsity=0.5, sparsity_pattern="unstructured")) == base
    assert shape_hash_of(conv(32)) != base


def test_migration_0004_fills_the_aggregates_and_goes_back(store_url: str) -> None:
    """Measurements stored before 0004 are summarised by it; downgrading restores the old indexes, rows kept."""
    engine = create_store_engine(store_url)
    try:
        downgrade_schema(engine, "base")
        upgrade_schema(engine, "0003")
        rows = _rows(40)
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO devices (name, backend, execution_provider, runtime_version, "
                                    "threads, host, created_at) VALUES ('old', 'onnxruntime', 'CPU', '1.0', 1, '', "
                                    "'2026-01-01 00:00:00')"))
            device_id = connection.execute(text("SELECT id FROM devices")).scalar_one()
            for run, scale in (("r1", 1.0), ("r2", 2.0)):
                for row in rows[: 40 if run == "r1" else 10] + [_unreadable(3)]:
                    connection.execute(text(
                        "INSERT INTO measurements (device_id, run_id, key_hash, key, op_type, bits, median_ms, p10_ms, "
                        "p90_ms, repeats, created_at) VALUES (:d, :r, :h, :k, :o, :b, :m, :m, :m, 1, "
                        "'2026-01-01 00:00:00')"),
                        {"d": device_id, "r": run, "h": row.key_hash, "k": json.dumps(row.key),
                         "o": row.op_type, "b": row.bits, "m": row.median_ms * scale})
        upgrade_schema(engine)
        factory = session_factory(engine)
        with session_scope(factory) as session:
            device = session.get(Device, device_id)
            assert device is not None
            expected = _from_raw_rows(session, device)
            _assert_same(_aggregate(session, device), expected) and len(expected) == 41
            assert sum(t.measurements for t in read_tallies(session, device.id)) == 52
            assert sum(t.kernels for t in read_tallies(session, device.id)) == 41
            assert _as_dict(read_measured_rows(session, device.id))[rows[0].key_hash][0] == pytest.approx(
                rows[0].median_ms * 1.5)
            assert table_version(session, "old").table_seq == 0
            # New uploads continue from the backfilled rows.
            assert add_measurements(session, device, "r3", [rows[0]]) == 1
            assert _aggregate(session, device)[rows[0].key_hash] == (pytest.approx(rows[0].median_ms), 3)
        downgrade_schema(engine, "0003")
        inspector = inspect(engine)
        assert "measured_kernels" not in inspector.get_table_names()
        assert {tuple(c["column_names"]) for c in inspector.get_unique_constraints("measurements")} == {
            ("device_id", "run_id", "key_hash")}
        assert {tuple(i["column_names"]) for i in inspector.get_indexes("measurements")} - {
            ("device_id", "run_id", "key_hash")} == {("run_id",), ("key_hash",), ("op_type",)}
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM measurements")).scalar_one() == 53
    finally:
        upgrade_schema(engine)
        engine.dispose()


def test_other_key_hashes_are_what_the_partial_index_holds(factory: sessionmaker[Session], device: Device) -> None:
    """The index of key hashes no KernelKey has holds exactly those (each database's own predicate), and a
    PostgreSQL load finds them through it, not by testing every kernel."""
    odd = [MeasurementIn(key=dict(UNREADABLE, index=index), key_hash=key_hash, op_type="Conv", bits=32,
                         median_ms=1.0, p10_ms=1.0, p90_ms=1.0, repeats=1)
           for index, key_hash in enumerate(["ABCDEF" * 5 + "01", "short", "g" * 32, "0" * 33])]
    with session_scope(factory) as session:
        add_measurements(session, device, "run-1", _rows(40) + odd)
    with session_scope(factory) as session:
        dialect = session.get_bind().dialect.name
        where = OTHER_KEY_HASH_POSTGRESQL if dialect == "postgresql" else OTHER_KEY_HASH_SQLITE
        found = set(session.scalars(text(f"SELECT key_hash FROM measured_kernels WHERE device_id = :device AND "
                                         f"({where})"), {"device": device.id}))
        assert found == {row.key_hash for row in odd}
        assert set(read_measured_rows(session, device.id).other_hashes) == found
        if dialect == "postgresql":
            session.execute(text("SET LOCAL enable_seqscan = off"))  # a table this small is scanned otherwise
            plan = "\n".join(session.scalars(text("EXPLAIN " + aggregates._OTHERS_QUERY.replace("{conditions}", "")),
                                              {"device_id": device.id}))
            assert "ix_measured_kernels_other_keys" in plan, plan
