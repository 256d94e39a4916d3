"""An item measured while the host ran far from its typical speed is measured again, not written scaled."""
from __future__ import annotations

from dataclasses import replace

import onnx
import pytest
from sqlalchemy import Engine

from predictor.compression.config import parse_config
from predictor.records import RunReport
from profiler.backends.base import MeasureProtocol, Timing, reference_model
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import model_plan
from profiler.runner import ProfileRunner
from tests import factories
from tests.profiler.test_reference_kinds import _device

_FIVE_RUNS = MeasureProtocol(warmup_runs=0, min_repeats=5, max_repeats=5, max_seconds=10.0)
_PRUNED = [(f"prune{ratio}", parse_config({"default": {"prune_ratio": ratio / 10}})) for ratio in (1, 2, 3, 4, 5)]


class _SpellBackend(OnnxRuntimeBackend):
    """The real backend measures the models; their paired reference reads what `references` says, item by item (1 ms
    when it runs out). An item whose reference reads above 1.2 ms is timed `slowdown` times slower, as a spell slows
    a model more than the reference; the quick fp32 reference then reads `busy_polls` times 1.5 ms, then 1 ms."""

    def __init__(self, references: list[float], slowdown: float = 1.7, busy_polls: int = 0,
                 fail_run: int | None = None) -> None:
        super().__init__(threads=1, paired=True)
        self.fail_run = fail_run
        self.references = list(references)
        self.slowdown = slowdown
        self.busy_polls = busy_polls
        self.item_runs = 0
        self.fp32_reference_runs = 0

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        if model.graph.name in {reference_model(kind).graph.name for kind in ("fp32", "int8")}:
            self.fp32_reference_runs += model.graph.name == reference_model().graph.name
            busy = model.graph.name == reference_model().graph.name and self.fp32_reference_runs > 2 \
                and self.busy_polls > 0
            self.busy_polls -= busy
            value = 1.5 if busy else 1.0
            return Timing(median_ms=value, p10_ms=value, p90_ms=value, repeats=10)
        timing = super().measure_model(model, protocol, paired=False)
        if paired is False:  # the backend's own calibration models
            return timing
        reference_ms = self.references[self.item_runs] if self.item_runs < len(self.references) else 1.0
        self.item_runs += 1
        if self.item_runs == self.fail_run:
            raise RuntimeError("the runtime failed this time")
        if reference_ms > 1.2:
            timing = replace(timing, median_ms=timing.median_ms * self.slowdown)
        return replace(timing, reference_ms=reference_ms, reference_kind=reference or self.reference_kind_of(model))


def test_an_item_measured_in_a_spell_is_measured_again_once_the_host_is_calm(store_engine: Engine) -> None:
    # The fifth item's first measurement falls in a spell (reference 1.4 ms against a typical 1 ms, and the quick
    # reference busy too); its second, after two more busy looks at the quick reference, does not.
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.4, 1.0], busy_polls=3)
    slept: list[float] = []
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED)
    report = ProfileRunner("spells", backend, _device(store_engine, "spells"), _FIVE_RUNS,
                           sleep=slept.append).run(items, budget_minutes=5)
    assert backend.item_runs == 7  # six items, one of them twice
    assert slept == [2.0, 2.0]
    assert report.remeasured == [{"label": "block/prune4", "reference": "fp32", "kept": 1,
                                  "ratios": [pytest.approx(1.4), pytest.approx(1.0)]}]
    spell = next(entry for entry in report.end_to_end if entry.label == "block/prune4")
    # Written from the calm measurement: not scaled, and not the spell's 1.7x slower run scaled by 1/1.4.
    assert spell.compensation == pytest.approx(1.0)
    assert "1 model measured again after a spell" in "\n".join(report.summary_lines())
    assert RunReport.from_dict(report.to_dict()).remeasured == report.record().remeasured


def test_a_reference_off_its_typical_time_on_a_calm_host_is_the_pairings_own_not_a_spell(
        store_engine: Engine) -> None:
    # Some models' paired reference runs off its typical time whatever the host does: the quick reference, timed
    # alone, says the host is calm, and the item is scaled by its own reference without a second measurement.
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.4, 1.0], slowdown=1.0)
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED)
    report = ProfileRunner("paired", backend, _device(store_engine, "paired"), _FIVE_RUNS,
                           sleep=lambda s: None).run(items, budget_minutes=5)
    assert backend.item_runs == 6 and report.remeasured == []
    spell = next(entry for entry in report.end_to_end if entry.label == "block/prune4")
    assert spell.compensation == pytest.approx(1 / 1.4, rel=1e-3)


def test_a_host_that_stays_slower_is_compensated_not_measured_again(store_engine: Engine) -> None:
    sink = _device(store_engine, "steady")
    first = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED[:2])
    ProfileRunner("steady", _SpellBackend([1.0] * 3), sink, _FIVE_RUNS).run(first, budget_minutes=5)
    # A later run on a host 1.3x slower throughout: scaled to the first run's baseline, and no spell.
    backend = _SpellBackend([1.3] * 6, slowdown=1.3)
    later = model_plan(factories.residual_model(), "residual", _PRUNED)
    report = ProfileRunner("steady", backend, sink, _FIVE_RUNS, sleep=lambda s: None).run(later, budget_minutes=5)
    assert backend.item_runs == 6
    assert report.remeasured == []
    assert [entry.compensation for entry in report.end_to_end] == [pytest.approx(1 / 1.3, rel=1e-3)] * 6


def test_a_spell_that_outlasts_the_wait_keeps_the_nearer_measurement(store_engine: Engine) -> None:
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.5, 1.3], busy_polls=100)
    slept: list[float] = []
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED[:3])
    report = ProfileRunner("long", backend, _device(store_engine, "long"), _FIVE_RUNS,
                           sleep=slept.append).run(items, budget_minutes=5)
    # The wait ends after 30 s of polls; the second measurement, nearer the typical time, is written scaled.
    assert sum(slept) == pytest.approx(30.0)
    assert report.remeasured[0]["kept"] == 1
    assert report.end_to_end[-1].compensation == pytest.approx(1 / 1.3, rel=1e-3)


def test_an_item_whose_second_measurement_fails_keeps_its_first(store_engine: Engine) -> None:
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.4], busy_polls=1, fail_run=5)
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED[:3])
    report = ProfileRunner("failed-again", backend, _device(store_engine, "failed-again"), _FIVE_RUNS,
                           sleep=lambda s: None).run(items, budget_minutes=5)
    assert report.items_failed == []
    assert report.remeasured == [{"label": "block/prune3", "reference": "fp32", "kept": 0,
                                  "ratios": [pytest.approx(1.4)]}]
    assert len(report.items_done) == 4 and report.end_to_end[-1].label == "block/prune3"
