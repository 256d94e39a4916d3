"""The accuracy benchmark's ground truth (passes over the zoo; a file measured in a spell of the host is measured
again) and its sets."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest

from benchmarks import accuracy
from profiler.backends.base import Timing
from profiler.plan import prior_index
from tests import factories


class _ScriptedMeasurer:
    """Unit-test stand-in (the benchmark itself measures with the real backend): each measurement of a model reads
    the next (model ms, reference ms) of its script."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        self.script = list(script)

    def measure_model(self, model: onnx.ModelProto, protocol: object, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        median_ms, reference_ms = self.script.pop(0)
        return Timing(median_ms=median_ms, p10_ms=median_ms, p90_ms=median_ms, repeats=5, reference_ms=reference_ms,
                      reference_kind="fp32")


def test_a_file_measured_in_a_spell_is_measured_again_and_the_calm_measurement_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(accuracy.time, "sleep", pauses.append)
    readings = {"fp32": [1.0, 1.0, 1.02]}
    # The model ran 1.7x slower in a spell that slowed the reference 1.4x; scaled, that would keep +21%.
    measurer = _ScriptedMeasurer([(17.0, 1.4), (10.2, 1.01)])
    truth, ratios = accuracy.measure_calm(measurer, factories.conv_bn_relu_model(), {"fp32": 1.0}, readings,
                                          calm=lambda: False)
    assert pauses == [10.0]
    assert ratios == [pytest.approx(1.4), pytest.approx(1.01)]
    assert (truth.measured_ms, truth.scaled_ms) == (10.2, pytest.approx(10.2 / 1.01))
    assert readings["fp32"][-1] == 1.01

    # Near its typical time, off it on a calm host (the pairing's own effect), or before three files have set a
    # typical time, a file is measured once.
    near = _ScriptedMeasurer([(10.0, 1.1)])
    assert accuracy.measure_calm(near, factories.conv_bn_relu_model(), {"fp32": 1.0}, readings, lambda: False)[1] \
        is None
    paired = _ScriptedMeasurer([(10.0, 1.5)])
    assert accuracy.measure_calm(paired, factories.conv_bn_relu_model(), {"fp32": 1.0}, readings, lambda: True)[1] \
        is None
    first = _ScriptedMeasurer([(10.0, 1.5)])
    assert accuracy.measure_calm(first, factories.conv_bn_relu_model(), {"fp32": 1.0}, {}, lambda: False)[1] is None
    assert pauses == [10.0]


def test_the_unseen_set_shares_no_file_with_the_bench_set_nor_a_text_architecture_with_the_priors() -> None:
    from benchmarks import real_exports

    def spec(entry: real_exports.Entry) -> tuple[object, ...]:
        return entry.build, entry.exporter, entry.batch, entry.size, entry.compression

    bench, unseen = real_exports.default_zoo(), real_exports.unseen_zoo()
    assert len({e.name for e in unseen}) == len(unseen)
    assert all(e.build in real_exports.BUILDERS for e in unseen)
    assert not {spec(e) for e in unseen} & {spec(e) for e in bench}
    priors = {entry["architecture"] for entry in prior_index()}
    assert {e.build for e in unseen if e.family == "text" and e.compression == "fp32"}.isdisjoint(priors)


def test_a_file_is_held_against_its_median_pass_and_the_first_pass_alone_is_kept_apart() -> None:
    readings: dict[str, list[float]] = {}
    # Three passes: a slow phase the reference did not see (+18%), a calm pass, one a little fast; scaled, the
    # calm pass is the median.
    measurer = _ScriptedMeasurer([(11.8, 1.0), (10.0, 1.0), (9.7, 1.0)])
    row = {"model": "m", "compression": "fp32", "predicted_ms": 10.0, "table_hit_rate": 1.0, "interval_ms": [9, 11],
           "passes": []}
    for _ in range(3):
        row["passes"].append(accuracy.measure_pass(measurer, factories.conv_bn_relu_model(), {"fp32": 1.0}, readings,
                                                   calm=lambda: True))
        row = accuracy.settle(row)
    assert [p["measured_ms"] for p in row["passes"]] == [11.8, 10.0, 9.7]
    assert (row["pass"], row["measured_ms"], row["error"]) == (2, 10.0, pytest.approx(0.0))
    first = accuracy.settle(row, first_only=True)
    assert (first["pass"], first["measured_ms"], first["error"]) == (1, 11.8, pytest.approx(10.0 / 11.8 - 1))

    # The median is of scaled times: a pass whose reference ran 1.2x slow counts at its scaled time.
    paired = {**row, "passes": []}
    measurer = _ScriptedMeasurer([(12.0, 1.2), (10.5, 1.0), (9.0, 1.0)])
    for _ in range(3):
        paired["passes"].append(accuracy.measure_pass(measurer, factories.conv_bn_relu_model(), {"fp32": 1.0},
                                                      readings, calm=lambda: True))
    settled = accuracy.settle(paired)
    assert (settled["pass"], settled["compensated_measured_ms"]) == (1, pytest.approx(10.0))


class _FailingMeasurer:
    def measure_model(self, model: onnx.ModelProto, protocol: object, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        raise RuntimeError("onnxruntime gave up")


def test_a_later_pass_that_fails_is_listed_and_the_passes_before_stand(tmp_path: Path) -> None:
    onnx.save(factories.conv_bn_relu_model(), tmp_path / "m.onnx")
    record = {"file": "m.onnx", "input_shapes": {}}
    predictor = SimpleNamespace(reference_baselines={"fp32": 1.0})
    row = {"model": "m", "compression": "fp32", "predicted_ms": 10.0, "table_hit_rate": 1.0, "interval_ms": [9, 11],
           "passes": [{"measured_ms": 10.0, "scaled_ms": 10.0, "reference_ms": 1.0, "reference": "fp32"}]}
    again = accuracy.measure_again(row, record, tmp_path, predictor, _FailingMeasurer(), {}, calm=lambda: True)
    assert again["failed_passes"] == ["RuntimeError: onnxruntime gave up"]
    assert (len(again["passes"]), again["measured_ms"], again["error"]) == (1, 10.0, 0.0)

    # A pass that works is added, and the row held against the lower middle of its two passes.
    scripted = _ScriptedMeasurer([(12.0, 1.0)])
    again = accuracy.measure_again(again, record, tmp_path, predictor, scripted, {}, calm=lambda: True)
    assert [p["measured_ms"] for p in again["passes"]] == [10.0, 12.0]
    assert (again["pass"], again["measured_ms"]) == (1, 10.0)
