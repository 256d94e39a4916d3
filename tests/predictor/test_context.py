"""Model context: sensitivity, measurement contexts from run reports, the overhead fit that finds the effect,
and predictions that put each kernel into the context of the model it is predicted for."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import Engine

from predictor.estimation.context import ContextModel, measured_context_factors, measurement_contexts, sensitivity
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.overhead import fit_overhead
from predictor.estimation.regressors import training_sets
from predictor.estimation.training import train_device
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import Kernel, KernelKey
from predictor.records import RunReport
from predictor.store import (
    MeasurementIn,
    add_measurements,
    finish_run,
    get_device,
    register_device,
    session_factory,
    session_scope,
    start_run,
)

TRUE_CONTEXT = ContextModel(beta=0.3, base_mb=8.0, width_octaves=3.0)
PER_RUN_MS = 0.05


def depthwise_key(channels: int, size: int) -> KernelKey:
    """A memory-bound kernel (sensitivity near 1)."""
    return KernelKey(op_type="NchwcConv", inputs=((1, channels, size, size),), outputs=((1, channels, size, size),),
                     weight=(channels, 1, 3, 3),
                     attrs=(("group", channels), ("kernel_shape", (3, 3)), ("strides", (1, 1))))


def dense_key(channels: int, size: int) -> KernelKey:
    """A compute-bound kernel (sensitivity 0)."""
    return KernelKey(op_type="NchwcConv", inputs=((1, channels, size, size),), outputs=((1, channels, size, size),),
                     weight=(channels, channels, 3, 3),
                     attrs=(("group", 1), ("kernel_shape", (3, 3)), ("strides", (1, 1))))


def free_latency_ms(keys: list[KernelKey]) -> np.ndarray:
    """Context-free law: 1 ms per 20 MB moved plus 1 ms per 2 GMAC."""
    features = features_matrix(keys, cached=False)
    return features[:, FEATURE_NAMES.index("bytes_moved")] / 2e7 + features[:, FEATURE_NAMES.index("macs")] / 2e9


def traffic_and_sensitivity(keys: list[KernelKey]) -> tuple[np.ndarray, np.ndarray]:
    features = features_matrix(keys, cached=False)
    moved = features[:, FEATURE_NAMES.index("bytes_moved")]
    return moved, sensitivity(moved, features[:, FEATURE_NAMES.index("macs")])


def synthetic_models(seed: int = 0) -> list[list[KernelKey]]:
    """40 models from tiny (a few MB per run) to big (hundreds of MB), sharing some kernels."""
    rng = np.random.default_rng(seed)
    shared = [depthwise_key(c, s) for c in (16, 32, 64) for s in (14, 28, 56)]
    models = []
    for index in range(40):
        size = int(rng.choice([14, 28, 56, 112]))
        width = int(rng.choice([16, 24, 32, 48, 64, 96, 128, 192, 256]))
        own = [depthwise_key(width + 8 * index + i, size) for i in range(1 + index % 5)]
        own.append(dense_key(width + index, size))
        models.append(own + [shared[int(i)] for i in rng.choice(len(shared), size=4, replace=False)])
    return models


def record_profile(engine: Engine, device_name: str, models: list[list[KernelKey]], context: ContextModel | None
                   ) -> None:
    """Write what the profiler would: each key's first measurement (in its model's context) and the runs."""
    with session_scope(session_factory(engine)) as session:
        device = register_device(session, name=device_name, backend="onnxruntime",
                               execution_provider="CPUExecutionProvider", runtime_version="1.0", threads=1,
                               host="test")
        start_run(session, device, "run-1")
        seen: set[str] = set()
        rows, end_to_end = [], []
        for index, keys in enumerate(models):
            moved, sens = traffic_and_sensitivity(keys)
            factors = context.factors(sens, float(moved.sum())) if context else np.ones(len(keys))
            in_context = free_latency_ms(keys) * factors
            for key, latency in zip(keys, in_context.tolist(), strict=True):
                if key.key_hash not in seen:
                    seen.add(key.key_hash)
                    rows.append(MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type,
                                              bits=32, median_ms=latency, p10_ms=latency, p90_ms=latency, repeats=9))
            end_to_end.append({"label": f"model{index}", "measured_ms": PER_RUN_MS + float(in_context.sum()),
                               "kernel_hashes": [key.key_hash for key in keys]})
        add_measurements(session, device, "run-1", rows)
        finish_run(session, "run-1", "finished", {"end_to_end": end_to_end})


def test_sensitivity_is_one_for_memory_bound_and_zero_for_compute_bound_kernels() -> None:
    _, sens = traffic_and_sensitivity([depthwise_key(32, 56), dense_key(256, 14)])
    assert sens[0] > 0.95  # a depthwise 3x3 conv: about 1.1 MACs per byte
    assert sens[1] == 0.0


def test_factors_grow_in_log_of_traffic_above_the_base_and_saturate() -> None:
    model = ContextModel(beta=0.2, base_mb=8.0, width_octaves=2.0)
    factors = model.factors(np.ones(5), np.array([1e6, 8e6, 16e6, 32e6, 1e9]))
    assert factors.tolist() == pytest.approx([1.0, 1.0, 1.2, 1.4, 1.4])
    assert model.factors(np.zeros(1), 1e9).tolist() == [1.0]


def test_from_overhead_reads_an_active_model_only() -> None:
    assert ContextModel.from_overhead({"context": TRUE_CONTEXT.to_dict()}) == TRUE_CONTEXT
    assert ContextModel.from_overhead({"per_run_ms": 0.1}) is None
    assert ContextModel.from_overhead({"context": {"beta": 0.0, "base_mb": 8.0, "width_octaves": 2.0}}) is None
    assert ContextModel.from_overhead({"context": {"beta": "x"}}) is None
    assert ContextModel.from_overhead(None) is None


def test_measurement_context_is_the_first_sample_holding_the_key() -> None:
    contexts = measurement_contexts([["a", "b"], ["b", "c"], ["d", "x"]], {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0})
    # "b" keeps the traffic of the first sample; the sample naming "x" (not in the table) is skipped.
    assert contexts == {"a": 3.0, "b": 3.0, "c": 7.0}
    report = RunReport.from_dict({"end_to_end": [{"kernel_hashes": ["a", "c"]}]})
    factors = measured_context_factors(ContextModel(1.0, 1e-6, 10.0), ["a", "c", "d"], np.array([1.0, 5.0, 1.0]),
                                       np.zeros(3), [report])
    # "d" is named by no sample: it is taken to be measured in the median context (6 bytes).
    assert factors.tolist() == pytest.approx([1.0 + np.log2(6.0), 1.0 + np.log2(6.0), 1.0 + np.log2(6.0)])


def test_the_overhead_fit_finds_a_context_effect_and_prediction_follows_it(store_engine: Engine) -> None:
    models = synthetic_models()
    record_profile(store_engine, "ctx", models, TRUE_CONTEXT)
    with session_scope(session_factory(store_engine)) as session:
        device = get_device(session, "ctx")
        overhead = fit_overhead(session, device)
    assert overhead is not None and "context" in overhead
    found = overhead["context"]
    assert (found["beta"], found["base_mb"], found["width_octaves"]) == (0.3, 8.0, 3.0)
    assert overhead["fit_mape"] < 0.01 < overhead["fit_mape_without_context"]

    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "ctx"))
    assert predictor.context == TRUE_CONTEXT
    # A small model made of kernels that a big model measured: predicted at its own (small) context.
    small = [depthwise_key(16, 14), depthwise_key(32, 14)]
    big = models[int(np.argmax([traffic_and_sensitivity(keys)[0].sum() for keys in models]))]
    for keys in (small, big, small + big):
        moved, sens = traffic_and_sensitivity(keys)
        truth = free_latency_ms(keys) * TRUE_CONTEXT.factors(sens, float(moved.sum()))
        estimate = predictor.estimate([_kernel(key, i) for i, key in enumerate(keys)])
        # Table hits measured in other contexts: exact, as the context model is the true one.
        assert [k.latency_ms for k in estimate.kernels] == pytest.approx(truth.tolist(), rel=1e-9)
        assert estimate.latency_ms == pytest.approx(PER_RUN_MS + truth.sum(), rel=0.01)


def test_regressors_train_on_context_free_latencies(store_engine: Engine) -> None:
    models = synthetic_models()
    record_profile(store_engine, "ctx", models, TRUE_CONTEXT)
    with session_scope(session_factory(store_engine)) as session:
        device = get_device(session, "ctx")
        raw = training_sets(session, device)["NchwcConv"]
        metrics, overhead = train_device(session, device)
        assert overhead is not None and "context" in overhead
        free = training_sets(session, device)["NchwcConv"]
    assert "skipped" not in metrics["NchwcConv"]
    assert [k.key_hash for k in raw[0]] == [k.key_hash for k in free[0]]
    assert np.array(free[1]) == pytest.approx(free_latency_ms(free[0]), rel=1e-9)
    assert not np.allclose(raw[1], free[1], rtol=0.01)

    # A regressor's value is context-free too: the same unmeasured kernel, alone and inside a big model.
    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "ctx"))
    unmeasured = depthwise_key(40, 20)
    big = max(models, key=lambda keys: traffic_and_sensitivity(keys)[0].sum())
    alone = predictor.estimate([_kernel(unmeasured, 0)]).kernels[0]
    inside = predictor.estimate([_kernel(key, i) for i, key in enumerate([unmeasured, *big])]).kernels[0]
    assert (alone.source, inside.source) == ("regressor", "regressor")
    moved, sens = traffic_and_sensitivity([unmeasured, *big])
    expected = TRUE_CONTEXT.factors(sens[:1], float(moved.sum())) / TRUE_CONTEXT.factors(sens[:1], float(moved[0]))
    assert inside.latency_ms / alone.latency_ms == pytest.approx(float(expected[0]), rel=1e-9)
    assert expected[0] > 1.3


def test_no_context_effect_keeps_the_fit_and_the_table_as_they_were(store_engine: Engine) -> None:
    models = synthetic_models()
    record_profile(store_engine, "flat", models, None)
    with session_scope(session_factory(store_engine)) as session:
        device = get_device(session, "flat")
        overhead = fit_overhead(session, device)
        assert overhead is not None and "context" not in overhead
        assert overhead["per_run_ms"] == pytest.approx(PER_RUN_MS, rel=1e-3)
        predictor = DevicePredictor.load(session, device)
    assert predictor.context is None
    key = models[0][0]
    assert predictor.estimate([_kernel(key, 0)]).kernels[0].latency_ms == pytest.approx(
        float(free_latency_ms([key])[0]))


def _kernel(key: KernelKey, index: int) -> Kernel:
    return Kernel(name=f"k{index}", key=key, nodes=(f"k{index}",))
