"""The compact measured table of a loaded predictor: same lookups as the store's table, bounded memory per row."""
from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
from sqlalchemy import Engine

from predictor.estimation.estimate import DevicePredictor, _fallback_features_many, fit_bandwidth_fallback
from predictor.estimation.table import DIGEST_DTYPE, MeasuredRows, MeasuredTable
from predictor.kernels.keys import KernelKey
from predictor.store import (
    Device,
    MeasurementIn,
    add_measurements,
    create_store_engine,
    get_device,
    lookup_table,
    register_device,
    session_factory,
    session_scope,
    start_run,
    upgrade_schema,
)
from tests.factories import kernel_measurement_rows

# What a loaded predictor may hold per table row (tracemalloc, after load): 33 bytes now (32 in arrays); it
# was 1,700 with a dict of hex strings and one of KernelKeys (docs/history/results/memory.json). Its peak while
# loading is not asserted: at a test's table size the fixed cost of a chunk of parsed keys dominates it.
MAX_RETAINED_BYTES_PER_ROW = 200


def _keys(count: int, seed: int = 0) -> list[tuple[KernelKey, float]]:
    return [(KernelKey.from_dict(row["key"]), float(row["median_ms"]))  # type: ignore[arg-type]
            for row in kernel_measurement_rows(count, seed)]


def _store(engine: Engine, runs: dict[str, list[tuple[KernelKey, float]]]) -> None:
    with session_scope(session_factory(engine)) as session:
        device = register_device(session, name="table-cpu", backend="onnxruntime",
                               execution_provider="CPUExecutionProvider", runtime_version="1.0", threads=1,
                               host="test")
        for run_id, rows in runs.items():
            start_run(session, device, run_id)
            add_measurements(session, device, run_id, [
                MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                              median_ms=ms, p10_ms=ms * 0.9, p90_ms=ms * 1.1, repeats=10) for key, ms in rows])


def _device(session: object) -> Device:
    return get_device(session, "table-cpu")  # type: ignore[arg-type]


def test_loaded_table_is_the_stores_table(store_engine: Engine) -> None:
    """Median of run medians per key hash, as lookup_table computes it; hits, misses and fallback as before."""
    rows = _keys(300)
    again = [(key, ms * 2) for key, ms in rows[:100]]
    third = [(key, ms * 4) for key, ms in rows[:50]]
    _store(store_engine, {"first": rows, "second": again, "third": third})
    with session_scope(session_factory(store_engine)) as session:
        predictor = DevicePredictor.load(session, _device(session))
        expected = lookup_table(session, _device(session))
    assert predictor.measurement_count == 300
    assert dict(predictor.table) == pytest.approx(expected, rel=1e-12)
    assert predictor.table[rows[0][0].key_hash] == pytest.approx(rows[0][1] * 2)  # median of 1x, 2x, 4x
    assert predictor.table[rows[60][0].key_hash] == pytest.approx(rows[60][1] * 1.5)  # of 1x and 2x
    assert predictor.fallback == pytest.approx(
        fit_bandwidth_fallback([(key, expected[key.key_hash]) for key, _ in rows]), rel=1e-9)
    fresh = [key for key, _ in _keys(310, seed=1)[300:]]  # keys of the same kinds, never measured
    summary = predictor.summarize_many([[rows[5][0], rows[200][0]], fresh])  # 2x (of 1x, 2x, 4x) and 1x
    assert summary[0].sources == {"table": 2}
    assert summary[0].latency_ms == pytest.approx(rows[5][1] * 2 + rows[200][1])
    assert summary[1].sources == {"fallback": 10}


def test_lookups_by_key_agree_with_lookups_by_hash() -> None:
    """With or without the keys' Python hashes, a key is found exactly when its key hash is in the table."""
    measured = dict(_keys(200))
    axis_last = KernelKey(op_type="Softmax", inputs=((1, 8),), outputs=((1, 8),), attrs=(("axis", -1),))
    # CPython hashes -1 and -2 alike: this key passes the Python-hash pre-check and must still miss.
    axis_other = KernelKey(op_type="Softmax", inputs=((1, 8),), outputs=((1, 8),), attrs=(("axis", -2),))
    assert hash(axis_last) == hash(axis_other) and axis_last.key_hash != axis_other.key_hash
    measured[axis_last] = 0.25
    asked = [*list(measured)[::3], axis_other, *(key for key, _ in _keys(240, seed=2)[200:])]
    expected = [measured.get(key) for key in asked]
    assert expected.count(None) == 41
    with_keys = MeasuredTable.from_keys(measured)
    by_hash_only = MeasuredTable.from_medians({key.key_hash: ms for key, ms in measured.items()})
    assert with_keys.lookup_many(asked) == expected
    assert by_hash_only.lookup_many(asked) == expected
    assert dict(with_keys) == dict(by_hash_only) == {key.key_hash: ms for key, ms in measured.items()}


def test_any_key_hash_string_is_kept() -> None:
    """Hand-written tables keep every key: digests with zero bytes at the end, upper case, other lengths."""
    medians = {"ab" + "00" * 15: 1.0, "00" * 16: 2.0, "AB" + "00" * 15: 3.0, f"{7:064x}": 4.0, "x": 5.0}
    table = MeasuredTable.from_medians(medians)
    assert len(table) == 5 and dict(table) == medians
    assert table["AB" + "00" * 15] == 3.0 and "ab" + "01" * 15 not in table
    with pytest.raises(KeyError):
        table["cd" + "00" * 15]


def test_loaded_predictor_memory_per_row(tmp_path: object) -> None:
    """A loaded predictor holds tens of bytes per table row, not kilobytes (tracemalloc, not wall-clock)."""
    engine = create_store_engine(f"sqlite:///{tmp_path}/memory.db")
    upgrade_schema(engine)
    count = 5_000
    _store(engine, {"only": _keys(count)})
    factory = session_factory(engine)
    with session_scope(factory) as session:  # imports, SQL compilation and caches of a first load
        DevicePredictor.load(session, _device(session))
    gc.collect()
    tracemalloc.start()
    try:
        with session_scope(factory) as session:
            predictor = DevicePredictor.load(session, _device(session))
        gc.collect()
        retained, _ = tracemalloc.get_traced_memory()  # allocated since start() and still alive
    finally:
        tracemalloc.stop()
        engine.dispose()
    assert predictor.measurement_count == count
    assert retained / count < MAX_RETAINED_BYTES_PER_ROW


@pytest.mark.parametrize("order", ["sorted", "shuffled", "duplicate"])
def test_rows_said_presorted_are_checked(order: str) -> None:
    """Rows the store sends in key order are kept as they come; rows out of order are sorted all the same."""
    rng = np.random.default_rng(3)
    digests = np.sort(np.array([rng.bytes(16) for _ in range(50)], dtype=DIGEST_DTYPE))
    medians = np.arange(50, dtype=np.float64)
    if order == "shuffled":
        permutation = rng.permutation(50)
        digests, medians = digests[permutation], medians[permutation]
    elif order == "duplicate":  # not strictly increasing: never taken as sorted
        digests[1] = digests[0]
    rows = MeasuredRows.from_arrays(digests, medians, medians * 2, medians * 3, presorted=True)
    assert bool(np.all(rows.digests[1:] >= rows.digests[:-1]))
    if order == "sorted":
        assert np.shares_memory(rows.digests, digests) and np.shares_memory(rows.medians, medians), \
            "in order: kept, not copied"
    lookup = dict(zip(rows.digests.tolist(), rows.medians.tolist(), strict=True))
    assert lookup == dict(zip(digests.tolist(), medians.tolist(), strict=True))
    assert rows.macs.tolist() == (rows.medians * 3).tolist()


def test_a_memory_bound_kernel_no_table_or_regressor_covers_gets_the_fallback_fitted_on_memory_bound_kernels(
        store_engine: Engine) -> None:
    """Convs cost more per byte than elementwise kernels; an unknown elementwise op is priced like the latter."""
    convs = [KernelKey(op_type="FusedConv", inputs=((1, c, s, s),), outputs=((1, c, s, s),), weight=(c, c, 3, 3),
                       activation="Relu", attrs=(("group", 1), ("kernel_shape", (3, 3))))
             for c in (16, 32, 64, 128) for s in (7, 14, 28, 56)]
    adds = [KernelKey(op_type="Add", inputs=((1, c, s, s), (1, c, s, s)), outputs=((1, c, s, s),))
            for c in (16, 32, 64, 128, 256) for s in (7, 14, 28, 56)]
    features = {key: _fallback_features_many([key], cached=False)[0] for key in [*convs, *adds]}
    rows = [(key, 1e-8 * features[key][1] + 3e-7 * features[key][0]) for key in convs]
    rows += [(key, 0.002 + 5e-9 * features[key][0]) for key in adds]
    _store(store_engine, {"run": rows})
    with session_scope(session_factory(store_engine)) as session:
        predictor = DevicePredictor.load(session, _device(session))
    assert predictor.memory_fallback == pytest.approx(fit_bandwidth_fallback(rows[len(convs):]), rel=1e-9)
    assert predictor.fallback == pytest.approx(fit_bandwidth_fallback(rows), rel=1e-9)

    relu = KernelKey(op_type="Relu", inputs=((1, 512, 32, 32),), outputs=((1, 512, 32, 32),))
    moved, macs = _fallback_features_many([relu], cached=False)[0]
    assert macs <= moved  # memory-bound
    estimate = predictor.summarize_many([[relu]])[0]
    assert estimate.sources == {"fallback": 1}
    intercept, per_byte, per_mac = predictor.memory_fallback
    assert estimate.latency_ms == pytest.approx(intercept + per_byte * moved + per_mac * macs, rel=1e-6)
    truth = 0.002 + 5e-9 * moved
    assert estimate.latency_ms == pytest.approx(truth, rel=0.25)
    intercept, per_byte, per_mac = predictor.fallback
    assert abs(intercept + per_byte * moved + per_mac * macs - truth) > 0.5 * truth  # what one fit of all gives

    # A compute-bound kernel of an unknown op type keeps the fit over every kernel.
    deconv = KernelKey(op_type="ConvTranspose", inputs=((1, 64, 28, 28),), outputs=((1, 64, 28, 28),),
                       weight=(64, 64, 3, 3), attrs=(("kernel_shape", (3, 3)),))
    moved, macs = _fallback_features_many([deconv], cached=False)[0]
    assert macs > moved
    assert predictor.summarize_many([[deconv]])[0].latency_ms == pytest.approx(
        max(1e-4, intercept + per_byte * moved + per_mac * macs), rel=1e-6)
