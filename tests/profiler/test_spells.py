"""An item measured while the host ran far from its typical speed is measured again, not written scaled: at once
after a spell, minutes later after a slow phase that outlasts the spell rule."""
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
    when it runs out). An item whose reference reads above `slow_above` ms is timed `slowdown` times slower, as a
    spell slows a model more than the reference; the quick fp32 reference then reads `busy_polls` times 1.5 ms, then
    1 ms. Each item run moves `now` on by a minute (a clock for the runner)."""

    def __init__(self, references: list[float], slowdown: float = 1.7, busy_polls: int = 0,
                 fail_run: int | None = None, slow_above: float = 1.2) -> None:
        super().__init__(threads=1, paired=True)
        self.fail_run = fail_run
        self.slow_above = slow_above
        self.now = 0.0
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
        self.now += 60.0
        if self.item_runs == self.fail_run:
            raise RuntimeError("the runtime failed this time")
        if reference_ms > self.slow_above:
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
    # The wait ends after 30 s of polls; the second measurement, nearer the typical time, is kept.
    assert sum(slept) == pytest.approx(30.0)
    assert report.remeasured[0]["kept"] == 1
    # It is still 30% slower than the run's median on a host that is not calm: measured a third time when the plan
    # runs out, in a calm state, and written from that.
    assert report.remeasured[1] == {"label": "block/prune3", "reference": "fp32", "kept": 1, "against": "run median",
                                    "ratios": [pytest.approx(1.3), pytest.approx(1.0)]}
    assert report.end_to_end[-1].compensation == pytest.approx(1.0)


def test_an_item_whose_second_measurement_fails_keeps_its_first(store_engine: Engine) -> None:
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.4], busy_polls=1, fail_run=5)
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED[:3])
    report = ProfileRunner("failed-again", backend, _device(store_engine, "failed-again"), _FIVE_RUNS,
                           sleep=lambda s: None).run(items, budget_minutes=5)
    assert report.items_failed == []
    assert report.remeasured == [{"label": "block/prune3", "reference": "fp32", "kept": 0,
                                  "ratios": [pytest.approx(1.4)]}]
    assert len(report.items_done) == 4 and report.end_to_end[-1].label == "block/prune3"


def test_an_item_measured_in_a_slow_phase_is_held_and_measured_again_later(store_engine: Engine) -> None:
    # The fifth item's reference reads 1.15 ms: within the spell rule of its typical 1 ms, but 15% slower than its
    # median over the run, and the quick reference says the host is busy. The item is 1.7x slower then, which its
    # reference's 1.15x would not undo: its rows wait, and it is measured again when the plan runs out.
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.15, 1.0], busy_polls=1, slow_above=1.1)
    sink = _device(store_engine, "phase")
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED)
    report = ProfileRunner("phase", backend, sink, _FIVE_RUNS, sleep=lambda s: None).run(items, budget_minutes=5)
    assert backend.item_runs == 7
    assert report.remeasured == [{"label": "block/prune4", "reference": "fp32", "kept": 1, "against": "run median",
                                  "ratios": [pytest.approx(1.15), pytest.approx(1.0)]}]
    held = next(entry for entry in report.end_to_end if entry.label == "block/prune4")
    assert held.compensation == pytest.approx(1.0) and len(report.end_to_end) == 6
    assert report.items_done[-1] == items[4].item_id and len(report.items_done) == 6
    assert set(held.kernel_hashes) <= set(sink.known_table())
    assert "1 model measured again minutes later, after a slow phase" in "\n".join(report.summary_lines())
    assert RunReport.from_dict(report.to_dict()).remeasured == report.record().remeasured


def test_a_held_item_is_measured_again_once_it_is_due(store_engine: Engine) -> None:
    # Every item takes a minute on the backend's clock: the item held at 5 minutes is due at 7.5, so it is measured
    # again after the eighth item (8 minutes), not when the plan runs out.
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.15], busy_polls=1, slow_above=1.1)
    items = [*model_plan(factories.conv_bn_relu_model(), "block", _PRUNED),
             *model_plan(factories.residual_model(), "residual", _PRUNED)]
    report = ProfileRunner("due", backend, _device(store_engine, "due"), _FIVE_RUNS, clock=lambda: backend.now,
                           sleep=lambda s: None).run(items, budget_minutes=60)
    order = [*[item.item_id for item in items[:4]], *[item.item_id for item in items[5:8]], items[4].item_id,
             *[item.item_id for item in items[8:]]]
    assert report.items_done == order
    assert [entry["label"] for entry in report.remeasured] == ["block/prune4"]


def test_a_held_item_the_budget_leaves_no_time_for_is_written_as_first_measured(store_engine: Engine) -> None:
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.15], busy_polls=1, slow_above=1.1)
    sink = _device(store_engine, "short")
    items = [*model_plan(factories.conv_bn_relu_model(), "block", _PRUNED),
             *model_plan(factories.residual_model(), "residual", _PRUNED)]
    report = ProfileRunner("short", backend, sink, _FIVE_RUNS, clock=lambda: backend.now,
                           sleep=lambda s: None).run(items, budget_minutes=6)
    assert report.stopped_by == "budget" and backend.item_runs == 6
    assert report.remeasured == [] and report.items_done[-1] == items[4].item_id
    held = next(entry for entry in report.end_to_end if entry.label == "block/prune4")
    assert held.compensation == pytest.approx(1 / 1.15, rel=1e-3)
    assert set(held.kernel_hashes) <= set(sink.known_table())


def test_a_held_item_still_slow_when_measured_again_is_measured_a_third_time_at_most(store_engine: Engine) -> None:
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.15, 1.0, 1.15, 1.0], busy_polls=2, slow_above=1.1)
    items = model_plan(factories.conv_bn_relu_model(), "block", _PRUNED)
    report = ProfileRunner("third", backend, _device(store_engine, "third"), _FIVE_RUNS,
                           sleep=lambda s: None).run(items, budget_minutes=5)
    assert backend.item_runs == 8
    assert report.remeasured == [{"label": "block/prune4", "reference": "fp32", "kept": 2, "against": "run median",
                                  "ratios": [pytest.approx(1.15), pytest.approx(1.15), pytest.approx(1.0)]}]
    assert next(entry for entry in report.end_to_end if entry.label == "block/prune4").compensation == 1.0

    # Slow all three times: the third is the last, and the first of the nearest is kept.
    backend = _SpellBackend([1.0, 1.0, 1.0, 1.0, 1.15, 1.0, 1.15, 1.15], busy_polls=100, slow_above=1.1)
    report = ProfileRunner("slow", backend, _device(store_engine, "slow"), _FIVE_RUNS,
                           sleep=lambda s: None).run(items, budget_minutes=5)
    assert backend.item_runs == 8 and report.remeasured[0]["kept"] == 0 and len(report.items_done) == 6
