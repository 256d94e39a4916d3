"""Records crossing package boundaries round-trip through their dicts, read stores of before versions, refuse
versions they do not know."""
from __future__ import annotations

import pytest

from predictor.errors import InvalidRecordError, LatpredError
from predictor.records import RECORD_VERSION, Measurement, RunReport, Timing
from predictor.store import MeasurementIn

_TIMING = Timing(measured_ms=2.5, label="block/int8", compensation=0.97, reference="int8", reference_ms=0.41,
                 kernel_hashes=("a", "b"))
_REPORT = RunReport(run_id="r1", device="dev", items_done=("x", "y"), items_skipped=2, items_failed=("z",),
                    measured_per_op={"Conv": 3, "Add": 1}, flat_axes={"Conv": ["sparsity"]},
                    flat_evidence={"Conv": {"sparsity": 0.01}}, drift=({"elapsed_s": 4.0, "ratio": 1.2},),
                    reference_ms=1.1, baseline_reference_ms=1.0, references={"fp32": 1.1, "int8": 0.45},
                    baseline_references={"fp32": 1.0, "int8": 0.4}, end_to_end=(_TIMING,), elapsed_s=12.3,
                    budget_minutes=5.0, stopped_by="budget", clock="thread_cpu", paired=True,
                    refinement={"rounds": 1}, context_probes=({"probe": "p", "ratio": 1.1},),
                    profiler_costs_us={"overhead_us": 3.0})


def test_records_round_trip_through_their_dicts_with_a_version() -> None:
    data = _REPORT.to_dict()
    assert data["version"] == RECORD_VERSION == 1
    assert data["end_to_end"][0]["version"] == 1
    assert RunReport.from_dict(data) == _REPORT
    assert Timing.from_dict(_TIMING.to_dict()) == _TIMING
    measurement = Measurement(key={"op_type": "Conv", "bits": 8}, key_hash="h", op_type="Conv", bits=8,
                              median_ms=0.5, p10_ms=0.45, p90_ms=0.6, repeats=20)
    assert Measurement.from_dict(measurement.to_dict()) == measurement


def test_dicts_without_a_version_are_version_one_as_stores_hold_them() -> None:
    stored = {"run_id": "old", "device": "dev", "baseline_reference_ms": 1.0, "reference_ms": 1.2,
              "end_to_end": [{"label": "m", "measured_ms": 3.0, "kernel_hashes": ["a"]}], "some_later_key": 1}
    report = RunReport.from_dict(stored)
    assert report.end_to_end == (Timing(measured_ms=3.0, label="m", kernel_hashes=("a",)),)
    # reports from before the int8 reference name the fp32 one's times only in the flat fields
    assert (report.reference_of("fp32"), report.reference_of("fp32", baseline=False)) == (1.0, 1.2)
    assert report.reference_of("int8") is None
    assert RunReport.from_dict({}) == RunReport()
    row = {"key": {"op_type": "Conv", "bits": 8}, "median_ms": 0.5}
    assert Measurement.from_dict(row) == Measurement(key={"op_type": "Conv", "bits": 8}, key_hash="", op_type="Conv",
                                                     bits=8, median_ms=0.5, p10_ms=0.5, p90_ms=0.5, repeats=1)


@pytest.mark.parametrize("record", [RunReport, Timing, Measurement])
@pytest.mark.parametrize("version", [2, 0, "1", True])
def test_unknown_versions_are_refused(record: type, version: object) -> None:
    with pytest.raises(InvalidRecordError, match="version") as caught:
        record.from_dict({"version": version, "measured_ms": 1.0, "key": {}, "median_ms": 1.0})
    assert isinstance(caught.value, LatpredError)


@pytest.mark.parametrize("bad", [
    [], {"end_to_end": "x"}, {"end_to_end": [{"measured_ms": "slow"}]}, {"flat_axes": {"Conv": "sparsity"}},
    {"references": {"fp32": float("nan")}}, {"drift": [1.0]}, {"items_skipped": 1.5},
])
def test_malformed_reports_are_refused_naming_the_field(bad: object) -> None:
    with pytest.raises(InvalidRecordError, match="run report|end-to-end timing"):
        RunReport.from_dict(bad)


def test_a_stored_measurement_is_a_measurement_record() -> None:
    row = MeasurementIn(key={"op_type": "Add"}, key_hash="h", op_type="Add", bits=32, median_ms=0.1, p10_ms=0.1,
                        p90_ms=0.2, repeats=5)
    assert isinstance(row, Measurement)
    assert Measurement.from_dict(row.to_dict()) == Measurement(**{k: v for k, v in row.to_dict().items()
                                                                  if k != "version"})
