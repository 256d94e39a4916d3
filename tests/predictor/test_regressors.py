"""Per-op-type LightGBM regressors: accuracy on a known latency law, intervals, text round trip, store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import Engine

from predictor.estimation.regressors import (
    Baseline,
    InvalidRegressorError,
    OpRegressor,
    RegressorSet,
    train_device_regressors,
    train_op_regressor,
)
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import KernelKey
from predictor.store import (
    MeasurementIn,
    add_measurements,
    load_regressors,
    register_device,
    session_factory,
    session_scope,
)


def conv_key(cin: int, cout: int, size: int, k: int = 3, stride: int = 1, op_type: str = "NchwcConv") -> KernelKey:
    out = (size + stride - 1) // stride
    return KernelKey(
        op_type=op_type,
        inputs=((1, cin, size, size),),
        outputs=((1, cout, out, out),),
        weight=(cout, cin, k, k),
        attrs=(("group", 1), ("kernel_shape", (k, k)), ("strides", (stride, stride))),
    )


def random_conv_keys(n: int, seed: int, op_type: str = "NchwcConv") -> list[KernelKey]:
    rng = np.random.default_rng(seed)
    return [
        conv_key(int(rng.integers(3, 257)), int(rng.integers(4, 257)), int(rng.choice([7, 14, 28, 56])),
                 k=int(rng.choice([1, 3, 5])), stride=int(rng.choice([1, 2])), op_type=op_type)
        for _ in range(n)
    ]


def true_latency_ms(keys: list[KernelKey]) -> np.ndarray:
    """Known law: linear in MACs, 30% slower when Cout is not a multiple of 8, plus a 10 us launch cost."""
    features = features_matrix(keys)
    macs = features[:, FEATURE_NAMES.index("macs")]
    cout = features[:, FEATURE_NAMES.index("cout")]
    return macs / 1e9 * np.where(cout % 8 != 0, 1.3, 1.0) + 0.01


@pytest.fixture(scope="module")
def trained() -> tuple[OpRegressor, dict]:
    keys = random_conv_keys(400, seed=0)
    return train_op_regressor(keys, true_latency_ms(keys), seed=0)


def test_held_out_accuracy_on_a_known_latency_law(trained: tuple[OpRegressor, dict]) -> None:
    _, metrics = trained
    assert metrics["held_out"] is True
    assert (metrics["n_samples"], metrics["n_train"], metrics["n_test"]) == (400, 320, 80)
    assert metrics["mape"] < 0.10
    assert metrics["within_10pct"] > 0.7
    assert metrics["within_5pct"] <= metrics["within_10pct"]
    # Calibrated 10-90% interval: about 80% of held-out measurements inside.
    assert 0.6 <= metrics["interval_coverage"] <= 1.0
    assert json.loads(json.dumps(metrics)) == metrics


def test_fresh_keys_are_predicted_within_tolerance(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    keys = random_conv_keys(200, seed=7)
    median, lo, hi = regressor.predict(keys)
    relative_error = np.abs(median - true_latency_ms(keys)) / true_latency_ms(keys)
    assert np.mean(relative_error) < 0.12
    assert np.all(lo <= median) and np.all(median <= hi) and np.all(lo > 0)
    assert np.mean(hi / lo) > 1.0


def test_regressor_learns_the_channel_alignment_jump(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    median, _, _ = regressor.predict([conv_key(128, 63, 28), conv_key(128, 64, 28)])
    # 64 channels do more work but run on the aligned path: the truth is 1.3 * 63/64 ~ 1.28x.
    assert median[0] / median[1] > 1.15


def test_text_round_trip_gives_identical_predictions(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    text = regressor.to_text()
    header = json.loads(text.partition("\n")[0])
    assert header["format"] == "latpred-op-regressor" and header["op_type"] == "NchwcConv"
    assert header["features"] == FEATURE_NAMES
    again = OpRegressor.from_text(text)
    keys = random_conv_keys(50, seed=3)
    for before, after in zip(regressor.predict(keys), again.predict(keys), strict=True):
        np.testing.assert_array_equal(before, after)
    assert again.to_text() == text


def test_malformed_or_stale_text_is_rejected(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    text = regressor.to_text()
    header_line, _, body = text.partition("\n")
    header = json.loads(header_line)
    with pytest.raises(InvalidRegressorError, match="JSON header"):
        OpRegressor.from_text("tree\nversion=v4\n")
    with pytest.raises(InvalidRegressorError, match="truncated"):
        OpRegressor.from_text(text[:-100])
    stale = json.dumps({**header, "features": FEATURE_NAMES[:-1]})
    with pytest.raises(InvalidRegressorError, match="another feature set"):
        OpRegressor.from_text(stale + "\n" + body)
    assert isinstance(InvalidRegressorError("x"), ValueError)


def gemm_keys(rows: range, k: int = 256, n: int = 128) -> list[KernelKey]:
    return [KernelKey(op_type="Gemm", inputs=((m, k),), outputs=((m, n),), weight=(k, n)) for m in rows]


def macs_of(keys: list[KernelKey]) -> np.ndarray:
    return features_matrix(keys)[:, FEATURE_NAMES.index("macs")]


def test_a_linear_law_extrapolates_to_kernels_four_times_the_largest_sampled() -> None:
    """The additive baseline: a per-run cost plus time per MAC carries on beyond the sampled sizes."""
    train = gemm_keys(range(1, 61))
    regressor, _ = train_op_regressor(train, 0.01 + macs_of(train) * 2e-8)
    assert regressor.baseline.form == "additive"
    assert all(c >= 0 for c in regressor.baseline.coefficients)
    far = gemm_keys(range(200, 241, 20))
    np.testing.assert_allclose(regressor.predict(far)[0], 0.01 + macs_of(far) * 2e-8, rtol=0.05)


def test_a_power_law_keeps_the_log_log_baseline() -> None:
    """A cost growing as the square root of work: the power law extrapolates, a line would not."""
    train = gemm_keys(range(1, 61))
    regressor, _ = train_op_regressor(train, 1e-4 * np.sqrt(macs_of(train)))
    assert regressor.baseline.form == "loglog"
    far = gemm_keys(range(200, 241, 20))
    np.testing.assert_allclose(regressor.predict(far)[0], 1e-4 * np.sqrt(macs_of(far)), rtol=0.05)


def test_a_regressor_text_without_a_baseline_form_reads_as_log_log(trained: tuple[OpRegressor, dict]) -> None:
    """Texts stored before the additive form existed keep predicting as they did."""
    regressor, _ = trained
    header_line, _, body = regressor.to_text().partition("\n")
    header = json.loads(header_line)
    assert header["baseline_form"] == regressor.baseline.form
    del header["baseline_form"]
    old = OpRegressor.from_text(json.dumps(header) + "\n" + body)
    assert old.baseline == Baseline("loglog", regressor.baseline.coefficients)
    with pytest.raises(InvalidRegressorError, match="malformed baseline"):
        OpRegressor.from_text(json.dumps({**header, "baseline_form": "cubic"}) + "\n" + body)


def test_tiny_data_trains_on_all_and_says_so() -> None:
    keys = random_conv_keys(6, seed=1)
    regressor, metrics = train_op_regressor(keys, true_latency_ms(keys))
    assert metrics["held_out"] is False
    assert (metrics["n_samples"], metrics["n_train"], metrics["n_test"]) == (6, 6, 0)
    median, lo, hi = regressor.predict(keys)
    assert np.all(np.isfinite(median)) and np.all(lo <= median) and np.all(median <= hi)
    # The baseline still orders kernels by work.
    order = np.argsort(true_latency_ms(keys))
    assert median[order[-1]] > median[order[0]]


def test_training_is_deterministic() -> None:
    keys = random_conv_keys(60, seed=2)
    first, first_metrics = train_op_regressor(keys, true_latency_ms(keys), seed=5)
    second, second_metrics = train_op_regressor(keys, true_latency_ms(keys), seed=5)
    assert first.to_text() == second.to_text()
    assert first_metrics == second_metrics


def test_bad_training_input_is_refused() -> None:
    keys = random_conv_keys(20, seed=4)
    with pytest.raises(ValueError, match="one op type"):
        train_op_regressor(keys[:10] + random_conv_keys(10, seed=5, op_type="Conv"), np.ones(20))
    with pytest.raises(ValueError, match="> 0"):
        train_op_regressor(keys, np.zeros(20))
    with pytest.raises(ValueError, match="latencies"):
        train_op_regressor(keys, np.ones(19))
    with pytest.raises(ValueError, match="at least 2"):
        train_op_regressor(keys[:1], [1.0])


def _fused(keys: list[KernelKey]) -> list[KernelKey]:
    return [replace(key, op_type="FusedConv", activation="Relu") for key in keys]


def _aligned_law(keys: list[KernelKey]) -> np.ndarray:
    """Twice as slow where Cout is not a multiple of 16 (a fast path lost); the fused activation costs 5%."""
    features = features_matrix(keys)
    macs, cout = features[:, FEATURE_NAMES.index("macs")], features[:, FEATURE_NAMES.index("cout")]
    fused = np.array([key.op_type == "FusedConv" for key in keys])
    return (macs / 1e9 * np.where(cout % 16 != 0, 2.0, 1.0) + 0.01) * np.where(fused, 1.05, 1.0)


def test_a_fused_op_type_learns_from_its_unfused_sibling() -> None:
    """FusedConv measured only at aligned channel counts, Conv at all: the unaligned jump carries over."""
    fused = [key for key in _fused(random_conv_keys(600, seed=21, op_type="Conv"))
             if key.outputs[0][1] % 16 == 0]
    convs = random_conv_keys(300, seed=22, op_type="Conv")
    fresh = [key for key in _fused(random_conv_keys(300, seed=23, op_type="Conv")) if key.outputs[0][1] % 16][:50]
    truth = _aligned_law(fresh)
    alone, _ = train_op_regressor(fused, _aligned_law(fused))
    helped, metrics = train_op_regressor(fused, _aligned_law(fused), siblings=(convs, _aligned_law(convs)))
    error_alone = np.median(np.abs(alone.predict(fresh)[0] / truth - 1))
    error_helped = np.median(np.abs(helped.predict(fresh)[0] / truth - 1))
    assert error_alone > 0.3
    assert error_helped < 0.15
    # The hold-out and the counts are the op type's own; the siblings only train.
    assert (metrics["n_samples"], metrics["n_test"], metrics["n_sibling_samples"]) == (30, 6, 300)
    assert metrics["n_train"] == 24 + 300
    assert helped.op_type == "FusedConv"


def test_only_sibling_op_types_are_taken_as_siblings() -> None:
    fused = _fused(random_conv_keys(20, seed=24, op_type="Conv"))
    strangers = random_conv_keys(20, seed=25)
    with pytest.raises(ValueError, match="not sibling op types of FusedConv"):
        train_op_regressor(fused, np.ones(20), siblings=(strangers, np.ones(20)))
    with pytest.raises(ValueError, match="latencies"):
        train_op_regressor(fused, np.ones(20), siblings=(random_conv_keys(20, seed=26, op_type="Conv"), np.ones(3)))


def _trained_in_store(store_engine: Engine, measurements: list[MeasurementIn]) -> tuple[dict, RegressorSet]:
    """A device whose one run holds `measurements`, trained: (train_device_regressors' results, the stored set)."""
    factory = session_factory(store_engine)
    with session_scope(factory) as session:
        device = register_device(session, name="siblings", backend="onnxruntime",
                                 execution_provider="CPUExecutionProvider", runtime_version="1.18.0", threads=1,
                                 host="test")
        add_measurements(session, device, "run-1", measurements)
    with session_scope(factory) as session:
        return train_device_regressors(session, device), RegressorSet.load(session, device)


def test_an_op_type_with_too_few_keys_trains_on_its_siblings(store_engine: Engine) -> None:
    """Two FusedConv keys beside 30 Conv keys: a regressor that carries the Conv law over; three Softmax keys, with
    no sibling, stay untrained."""
    convs = random_conv_keys(30, seed=31, op_type="Conv")
    fused = _fused(random_conv_keys(2, seed=32, op_type="Conv"))
    softmax = [KernelKey(op_type="Softmax", inputs=((1, n),), outputs=((1, n),)) for n in (10, 100, 1000)]
    results, regressors = _trained_in_store(store_engine, _measurements(convs, _aligned_law(convs))
                                            + _measurements(fused, _aligned_law(fused))
                                            + _measurements(softmax, np.full(3, 0.01)))
    assert (results["FusedConv"]["n_samples"], results["FusedConv"]["n_sibling_samples"]) == (2, 30)
    assert results["Softmax"] == {"skipped": "only 3 samples", "n_samples": 3}
    fresh = _fused(random_conv_keys(40, seed=33, op_type="Conv"))
    truth = _aligned_law(fresh)
    assert np.median(np.abs(regressors.predict(fresh)[0] / truth - 1)) < 0.25
    # One key of its own is enough beside siblings; none is not.
    train_op_regressor(fused[:1], _aligned_law(fused[:1]), siblings=(convs, _aligned_law(convs)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        train_op_regressor([], [], siblings=(convs, _aligned_law(convs)))


def _linear_keys(op_type: str, shapes: list[tuple[int, int, int]]) -> list[KernelKey]:
    """nn.Linear as torch exports it: Gemm (transB, weight [N, K]) on 2-D input, MatMul (weight [K, N]) on 3-D."""
    if op_type == "Gemm":
        return [KernelKey(op_type="Gemm", inputs=((m, k),), outputs=((m, n),), weight=(n, k), attrs=(("transB", 1),))
                for m, k, n in shapes]
    return [KernelKey(op_type="MatMul", inputs=((1, m, k),), outputs=((1, m, n),), weight=(k, n))
            for m, k, n in shapes]


def _linear_law(keys: list[KernelKey]) -> np.ndarray:
    return macs_of(keys) / 2e9 + 0.005


def test_matmul_with_a_weight_trains_on_gemm_keys(store_engine: Engine) -> None:
    """A text model's projections are MatMuls; a table measured mostly as Gemms still predicts them."""
    rng = np.random.default_rng(41)
    sizes = (64, 128, 256, 512, 768, 1024, 2048)
    shapes = list(dict.fromkeys(tuple(int(v) for v in rng.choice(sizes, 3)) for _ in range(80)))[:60]
    gemms = _linear_keys("Gemm", shapes[:40])
    matmuls = _linear_keys("MatMul", shapes[40:43])
    results, regressors = _trained_in_store(store_engine, _measurements(gemms, _linear_law(gemms))
                                            + _measurements(matmuls, _linear_law(matmuls)))
    assert (results["MatMul"]["n_samples"], results["MatMul"]["n_sibling_samples"]) == (3, 40)
    assert results["Gemm"]["n_sibling_samples"] == 0
    fresh = _linear_keys("MatMul", shapes[43:])
    assert np.median(np.abs(regressors.predict(fresh)[0] / _linear_law(fresh) - 1)) < 0.25


def test_regressor_set_batches_mixed_op_types_in_order(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    gemms = gemm_keys(range(1, 41))
    gemm, _ = train_op_regressor(gemms, [0.001 * m + 0.005 for m in range(1, 41)])
    regressors = RegressorSet({"NchwcConv": regressor, "Gemm": gemm})
    assert regressors.op_types == ["Gemm", "NchwcConv"]
    assert regressors.has("Gemm") and not regressors.has("Softmax")
    convs = random_conv_keys(5, seed=9)
    mixed = [convs[0], gemms[3], convs[1], convs[0], gemms[30]]
    median, lo, hi = regressors.predict(mixed)
    conv_median = regressor.predict([convs[0], convs[1]])[0]
    gemm_median = gemm.predict([gemms[3], gemms[30]])[0]
    np.testing.assert_allclose(median, [conv_median[0], gemm_median[0], conv_median[1], conv_median[0],
                                        gemm_median[1]])
    assert np.all(lo <= median) and np.all(median <= hi)
    with pytest.raises(KeyError, match="Softmax"):
        regressors.predict([convs[0], KernelKey(op_type="Softmax", inputs=((1, 10),), outputs=((1, 10),))])
    assert all(len(part) == 0 for part in regressors.predict([]))


def test_predicting_300_kernels_is_fast(trained: tuple[OpRegressor, dict]) -> None:
    regressor, _ = trained
    op_types = ["NchwcConv", "FusedConv", "Conv", "QLinearConv", "Conv2"]
    regressors = RegressorSet({op: OpRegressor.from_text(regressor.to_text()) for op in op_types})
    queries = [k for i, op in enumerate(op_types) for k in random_conv_keys(60, seed=100 + i, op_type=op)]
    regressors.predict(queries)
    best = min(_timed(lambda: regressors.predict(queries)) for _ in range(5))
    # ~5 ms on an idle core; the bound leaves room for loaded CI machines.
    assert best < 0.05


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _measurements(keys: list[KernelKey], medians_ms: np.ndarray) -> list[MeasurementIn]:
    return [
        MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                      median_ms=float(median_ms), p10_ms=float(median_ms) * 0.9, p90_ms=float(median_ms) * 1.1,
                      repeats=10)
        for key, median_ms in zip(keys, medians_ms, strict=True)
    ]


def test_train_device_regressors_stores_what_regressor_set_loads(store_engine: Engine) -> None:
    convs = random_conv_keys(80, seed=11)
    conv_truth = true_latency_ms(convs)
    shapes = [(m, k) for m in (1, 4, 16, 64) for k in (32, 64, 128, 256, 512)]
    gemms = [KernelKey(op_type="Gemm", inputs=((m, k),), outputs=((m, 64),), weight=(k, 64)) for m, k in shapes]
    gemm_truth = np.array([2e-5 * m * k / 32 + 0.004 for m, k in shapes])
    softmax = [KernelKey(op_type="Softmax", inputs=((1, n),), outputs=((1, n),)) for n in (10, 100, 1000)]
    convs_plain = random_conv_keys(30, seed=12, op_type="Conv")
    fused = _fused(random_conv_keys(12, seed=13, op_type="Conv"))
    factory = session_factory(store_engine)
    with session_scope(factory) as session:
        device = register_device(session, name="cpu-test", backend="onnxruntime",
                               execution_provider="CPUExecutionProvider", runtime_version="1.18.0", threads=1,
                               host="test")
        # Gemm measured in three runs: the median of medians (the truth x 1.01) wins over a 5x outlier run.
        add_measurements(session, device, "run-1", _measurements(convs, conv_truth)
                         + _measurements(gemms, gemm_truth * 1.01) + _measurements(softmax, np.full(3, 0.01))
                         + _measurements(convs_plain, _aligned_law(convs_plain))
                         + _measurements(fused, _aligned_law(fused)))
        add_measurements(session, device, "run-2", _measurements(gemms, gemm_truth))
        add_measurements(session, device, "run-3", _measurements(gemms, gemm_truth * 5))
    calls: list[tuple[str, int, int]] = []
    with session_scope(factory) as session:
        results = train_device_regressors(session, device, progress=lambda *args: calls.append(args))
    assert calls == [("Conv", 1, 5), ("FusedConv", 2, 5), ("Gemm", 3, 5), ("NchwcConv", 4, 5), ("Softmax", 5, 5)]
    assert results["Softmax"] == {"skipped": "only 3 samples", "n_samples": 3}
    assert results["Gemm"]["n_samples"] == 20 and results["NchwcConv"]["n_samples"] == 80
    # Conv and FusedConv train on each other's keys too (SIBLING_OP_TYPES); other op types on their own.
    assert (results["FusedConv"]["n_samples"], results["FusedConv"]["n_sibling_samples"]) == (12, 30)
    assert (results["Conv"]["n_samples"], results["Conv"]["n_sibling_samples"]) == (30, 12)
    assert results["NchwcConv"]["n_sibling_samples"] == 0
    assert results["NchwcConv"]["held_out"] is True and results["NchwcConv"]["mape"] < 0.25

    with session_scope(factory) as session:
        stored = load_regressors(session, device)
        assert sorted(stored) == ["Conv", "FusedConv", "Gemm", "NchwcConv"]
        assert stored["Gemm"].metrics == results["Gemm"]
        assert stored["Gemm"].data_version == results["Gemm"]["data_version"]
        regressors = RegressorSet.load(session, device)
    assert regressors.op_types == ["Conv", "FusedConv", "Gemm", "NchwcConv"] and not regressors.has("Softmax")
    median, lo, hi = regressors.predict(gemms + convs[:10])
    expected = np.concatenate([gemm_truth, conv_truth[:10]])
    assert np.median(np.abs(median - expected) / expected) < 0.2
    assert np.all(lo <= median) and np.all(median <= hi)
    with pytest.raises(KeyError, match="Softmax"):
        regressors.predict(softmax)

    # Same data, same version; a new run changes the Gemm data version only.
    with session_scope(factory) as session:
        again = train_device_regressors(session, device)
        assert again["Gemm"]["data_version"] == results["Gemm"]["data_version"]
        add_measurements(session, device, "run-4", _measurements(gemms[:1], np.array([0.02])))
        newer = train_device_regressors(session, device, min_samples=2)
    assert newer["Gemm"]["data_version"] != results["Gemm"]["data_version"]
    assert newer["NchwcConv"]["data_version"] == results["NchwcConv"]["data_version"]
    assert newer["FusedConv"]["data_version"] == results["FusedConv"]["data_version"]
    # A sibling's new measurement is new data for both.
    with session_scope(factory) as session:
        add_measurements(session, device, "run-5", _measurements(convs_plain[:1], np.array([0.5])))
        sibling_news = train_device_regressors(session, device)
    assert sibling_news["FusedConv"]["data_version"] != results["FusedConv"]["data_version"]
    assert sibling_news["Conv"]["data_version"] != results["Conv"]["data_version"]
    assert newer["Softmax"]["n_samples"] == 3 and newer["Softmax"]["held_out"] is False
