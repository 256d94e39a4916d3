"""Models whose work is mostly int8 are paired with an int8 reference kernel, each kind with its own baseline."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import Engine

from predictor.compression.apply import apply_config
from predictor.compression.config import parse_config
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.validation import measure_against_table
from predictor.records import RunReport
from predictor.runtime.optimizer import describe_host
from predictor.store import get_device, register_device, session_factory, session_scope
from profiler.backends.base import MeasureProtocol, Timing, reference_model
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import model_plan
from profiler.runner import ProfileRunner
from profiler.sinks import StoreSink, reference_times
from tests import factories

_FIVE_RUNS = MeasureProtocol(warmup_runs=0, min_repeats=5, max_repeats=5, max_seconds=10.0)
_INT8 = parse_config({"default": {"bits": 8}})


def _big_and_small_conv() -> onnx.ModelProto:
    """A 3x3 conv of 16 -> 64 channels (most of the MACs), then a 1x1 conv of 64 -> 4."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w_big", (64, 16, 3, 3)), ("w_small", (4, 64, 1, 1)))]
    nodes = [helper.make_node("Conv", ["x", "w_big"], ["h"], name="big", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w_small"], ["y"], name="small")]
    graph = helper.make_graph(nodes, "big_and_small", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     [1, 16, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 28, 28])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_the_reference_follows_where_a_models_macs_are() -> None:
    backend = OnnxRuntimeBackend(threads=1)
    model = _big_and_small_conv()
    assert backend.reference_kind_of(model) == "fp32"
    assert backend.reference_kind_of(apply_config(model, _INT8)) == "int8"
    only_small = parse_config({"layers": {"small": {"bits": 8}}})
    only_big = parse_config({"layers": {"big": {"bits": 8}}})
    assert backend.reference_kind_of(apply_config(model, only_small)) == "fp32"
    assert backend.reference_kind_of(apply_config(model, only_big)) == "int8"


def test_the_int8_reference_runs_the_integer_conv() -> None:
    kernels = OnnxRuntimeBackend(threads=1).extract_kernels(reference_model("int8"))
    assert [k.key.op_type for k in kernels if k.key.bits == 8 and "Conv" in k.key.op_type] == ["QLinearConv"]
    assert reference_model("int8").graph.name != reference_model().graph.name
    with pytest.raises(ValueError, match="reference kind"):
        reference_model("int4")


def test_int8_models_are_paired_with_the_int8_reference() -> None:
    backend = OnnxRuntimeBackend(threads=1)
    int8 = backend.measure_model(apply_config(factories.conv_bn_relu_model(), _INT8), _FIVE_RUNS)
    fp32 = backend.measure_model(factories.conv_bn_relu_model(), _FIVE_RUNS)
    forced = backend.measure_model(apply_config(factories.conv_bn_relu_model(), _INT8), _FIVE_RUNS, reference="fp32")
    assert (int8.reference_kind, fp32.reference_kind, forced.reference_kind) == ("int8", "fp32", "fp32")
    assert int8.reference_ms and fp32.reference_ms and forced.reference_ms
    # The int8 conv is the faster of the two on this host's CPU (VNNI/AMX); both are real timings.
    assert int8.reference_ms != pytest.approx(forced.reference_ms, rel=1e-6)


class _Int8DriftBackend(OnnxRuntimeBackend):
    """The real backend, paired, except the reference kernels: fp32 reads 1 ms throughout, int8 `start_int8` ms
    at the start of a run (warm-up and start) and `item_int8` ms in the runs of every item paired with it."""

    def __init__(self, start_int8: float, item_int8: float = 1.0) -> None:
        super().__init__(threads=1, paired=True)
        self.start_int8 = start_int8
        self.item_int8 = item_int8
        self.int8_calls = 0

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        if model.graph.name == reference_model().graph.name:
            return Timing(median_ms=1.0, p10_ms=1.0, p90_ms=1.0, repeats=10)
        if model.graph.name == reference_model("int8").graph.name:
            self.int8_calls += 1
            value = self.start_int8 if self.int8_calls <= 2 else 1.0
            return Timing(median_ms=value, p10_ms=value, p90_ms=value, repeats=10)
        timing = super().measure_model(model, protocol, paired=False)
        kind = reference or self.reference_kind_of(model)
        return replace(timing, reference_ms=self.item_int8 if kind == "int8" else 1.0, reference_kind=kind)


def _device(engine: Engine, name: str) -> StoreSink:
    """A device registered for the real onnxruntime backend (1 thread) on this host, and the sink writing to it."""
    runtime = OnnxRuntimeBackend(threads=1).runtime()
    with session_scope(session_factory(engine)) as session:
        register_device(session, name=name, backend=runtime.backend, execution_provider=runtime.execution_provider,
                        runtime_version=runtime.runtime_version, threads=1, host=describe_host())
    return StoreSink(session_factory(engine), name)


def test_each_kind_is_compensated_by_its_own_reference_and_baseline(store_engine: Engine) -> None:
    sink = _device(store_engine, "kinds")
    items = model_plan(factories.conv_bn_relu_model(), "block", [("int8", _INT8)])
    report = ProfileRunner("kinds", _Int8DriftBackend(start_int8=0.5), sink, _FIVE_RUNS).run(items, budget_minutes=5)
    # A first run takes each kind's baseline as its items see that reference (1 ms for both, where the int8 one
    # read 0.5 ms on its own at the start): neither model is scaled, the int8 reference's move is reported.
    assert report.baseline_references == {"fp32": 1.0, "int8": 1.0}
    by_label = {e.label: e for e in report.end_to_end}
    assert by_label["block/fp32"].reference == "fp32"
    assert by_label["block/fp32"].compensation == pytest.approx(1.0)
    assert by_label["block/int8"].reference == "int8"
    assert by_label["block/int8"].compensation == pytest.approx(1.0)
    assert [(d["reference"], d["ratio"]) for d in report.drift] == [("int8", pytest.approx(2.0))]
    assert "DRIFT: int8 reference" in "\n".join(report.summary_lines())
    assert "compensated to the baseline 1.000 ms" in "\n".join(report.summary_lines())

    # A later run keeps the first run's baselines, kind by kind, and scales each kind by its own reference.
    again = model_plan(factories.residual_model(), "residual", [("int8", _INT8)])
    backend = _Int8DriftBackend(start_int8=0.8, item_int8=2.0)
    later = ProfileRunner("kinds", backend, sink, _FIVE_RUNS).run(again, budget_minutes=5)
    assert later.references == {"fp32": 1.0, "int8": 0.8}
    assert later.baseline_references == {"fp32": 1.0, "int8": 1.0}
    by_label = {e.label: e for e in later.end_to_end}
    assert by_label["residual/fp32"].compensation == pytest.approx(1.0)
    assert by_label["residual/int8"].compensation == pytest.approx(0.5)
    with session_factory(store_engine)() as session:
        predictor = DevicePredictor.load(session, get_device(session, "kinds"))
    assert predictor.reference_baselines == {"fp32": 1.0, "int8": 1.0}
    assert predictor.reference_ms == 1.0


def test_reports_from_before_the_int8_reference_name_only_fp32() -> None:
    old = [RunReport.from_dict({"baseline_reference_ms": 1.0, "reference_ms": 1.2})]
    new = [RunReport.from_dict({"baseline_reference_ms": 1.0, "reference_ms": 1.1,
                                "baseline_references": {"fp32": 1.0, "int8": 0.4},
                                "references": {"fp32": 1.1, "int8": 0.45}})]
    assert reference_times(old) == [1.0, 1.2] and reference_times(old, "int8") == []
    assert reference_times(old + new, "int8") == [0.4, 0.45]
    assert reference_times(old + new) == [1.0, 1.2, 1.0, 1.1]


class _RecordingMeasurer:
    """Unit-test stand-in (the real backend is measured above): records which reference it was asked for."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def measure_model(self, model: onnx.ModelProto, protocol: object, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        self.asked.append(reference)
        return Timing(median_ms=3.0, p10_ms=3.0, p90_ms=3.0, repeats=5, reference_ms=2.0,
                      reference_kind=reference or "int8")


def test_ground_truth_is_scaled_by_the_baseline_of_its_reference() -> None:
    measurer = _RecordingMeasurer()
    truth = measure_against_table(measurer, factories.conv_bn_relu_model(), None, {"fp32": 1.0, "int8": 0.5})
    assert (truth.reference, truth.scaled_ms) == ("int8", pytest.approx(3.0 * 0.5 / 2.0))
    # A device whose reports name no int8 baseline holds every model to the fp32 reference.
    old = measure_against_table(measurer, factories.conv_bn_relu_model(), None, {"fp32": 1.0})
    assert (old.reference, old.scaled_ms) == ("fp32", pytest.approx(3.0 * 1.0 / 2.0))
    assert measurer.asked == [None, "fp32"]
    assert measure_against_table(measurer, factories.conv_bn_relu_model(), None, {}).scaled_ms is None


def _kill_at(label: str) -> Callable[[int, float, float, str], None]:
    """A progress callback that stops the run (KeyboardInterrupt, as a SIGINT would) when it reaches `label`."""
    def progress(done: int, elapsed_s: float, budget_s: float, now: str) -> None:
        if now == label:
            raise KeyboardInterrupt
    return progress


def test_a_run_killed_while_rows_wait_for_a_baseline_lists_only_items_it_wrote(store_engine: Engine) -> None:
    """A first run holds each kind's first items until that kind's baseline is known. The fp32 baseline settling
    saves the report; the int8 items still waiting must not be in it, or the next run skips them and their
    kernels are never measured."""
    sink = _device(store_engine, "killed")
    items = [item for index, model in enumerate([factories.conv_bn_relu_model(), factories.residual_model(),
                                                  _big_and_small_conv(), factories.depthwise_model()])
             for item in model_plan(model, f"m{index}", [("int8", _INT8)])]
    # Items run fp32, int8 by model: the third fp32 item settles that baseline while two int8 items wait.
    with pytest.raises(KeyboardInterrupt):
        ProfileRunner("killed", _Int8DriftBackend(start_int8=1.0), sink, _FIVE_RUNS,
                      progress=_kill_at("m2/int8")).run(items, budget_minutes=5)
    by_label = {item.label: item.item_id for item in items}
    assert sink.done_items() == {by_label["m0/fp32"], by_label["m1/fp32"], by_label["m2/fp32"]}
    ProfileRunner("killed", OnnxRuntimeBackend(threads=1, paired=True), sink, _FIVE_RUNS).run(items,
                                                                                            budget_minutes=5)
    backend = OnnxRuntimeBackend(threads=1)
    needed = {kernel.key.key_hash for item in items
              for kernel in backend.extract_kernels(apply_config(item.build(), item.config))}
    assert needed <= set(sink.known_table())
