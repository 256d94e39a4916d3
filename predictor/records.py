"""Records that cross package boundaries, defined once: a profiling run's report, its end-to-end timings, and the
kernel measurements it uploads.

The profiler builds them and stores `to_dict()`; the predictor (overhead and context fits, baselines, flat
axes), the service (run routes, dashboard) and the CLI read them back with `from_dict`. Each dict carries a
`"version"` (written: RECORD_VERSION). A dict without one is version 1, the format stores held before records
were versioned, so existing databases load as they are; a version this code does not know is refused with
InvalidRecordError rather than half read. Stored keys are never renamed: a new field is a new key, with a
default for the records written before it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from predictor.errors import InvalidRecordError

__all__ = ["RECORD_VERSION", "Measurement", "RunReport", "Timing", "reports_of"]

RECORD_VERSION = 1
_KNOWN_VERSIONS = frozenset({1})


def _check_version(data: object, record: str) -> Mapping[str, Any]:
    """`data` as a mapping of a version this code reads; raises InvalidRecordError otherwise."""
    if not isinstance(data, Mapping):
        raise InvalidRecordError(f"{record}: expected a JSON object, got {type(data).__name__}")
    version = data.get("version", 1)
    if isinstance(version, bool) or version not in _KNOWN_VERSIONS:
        raise InvalidRecordError(f"{record}: unknown version {version!r} (this latpred reads version "
                                 f"{', '.join(str(v) for v in sorted(_KNOWN_VERSIONS))})")
    return data


def _number(data: Mapping[str, Any], name: str, record: str, default: float | None = None) -> float | None:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRecordError(f"{record}: {name} must be a finite number, got {value!r}")
    return float(value)


def _required_number(data: Mapping[str, Any], name: str, record: str) -> float:
    value = _number(data, name, record)
    if value is None:
        raise InvalidRecordError(f"{record}: {name} is missing")
    return value


def _integer(data: Mapping[str, Any], name: str, record: str, default: int = 0) -> int:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise InvalidRecordError(f"{record}: {name} must be an integer, got {value!r}")
    return int(value)


def _string(data: Mapping[str, Any], name: str, record: str, default: str = "") -> str:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidRecordError(f"{record}: {name} must be a string, got {value!r}")
    return value


def _list(data: Mapping[str, Any], name: str, record: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise InvalidRecordError(f"{record}: {name} must be a list, got {type(value).__name__}")
    return list(value)


def _mapping(data: Mapping[str, Any], name: str, record: str) -> dict[str, Any]:
    value = data.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRecordError(f"{record}: {name} must be an object, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def _numbers(data: Mapping[str, Any], name: str, record: str) -> dict[str, float]:
    values = _mapping(data, name, record)
    return {k: _required_number(values, k, f"{record}.{name}") for k in values}


@dataclass(frozen=True)
class Timing:
    """A model's end-to-end time in a profiling run (the samples the overhead and context fits learn from).

    `measured_ms`: its median, scaled to the device's baseline state by `compensation`; `reference` /
    `reference_ms`: the reference kernel it was scaled by and that kernel's time then; `kernel_hashes`: the
    keys of the kernels it ran, in order.
    """

    measured_ms: float | None
    label: str = ""
    compensation: float = 1.0
    reference: str = "fp32"
    reference_ms: float | None = None
    kernel_hashes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "label": self.label, "measured_ms": self.measured_ms,
                "compensation": self.compensation, "reference": self.reference, "reference_ms": self.reference_ms,
                "kernel_hashes": list(self.kernel_hashes)}

    @classmethod
    def from_dict(cls, data: object) -> Timing:
        record = "end-to-end timing"
        mapping = _check_version(data, record)
        hashes = _list(mapping, "kernel_hashes", record)
        if not all(isinstance(h, str) for h in hashes):
            raise InvalidRecordError(f"{record}: kernel_hashes must be strings")
        return cls(measured_ms=_number(mapping, "measured_ms", record), label=_string(mapping, "label", record),
                   compensation=_number(mapping, "compensation", record, 1.0) or 1.0,
                   reference=_string(mapping, "reference", record, "fp32"),
                   reference_ms=_number(mapping, "reference_ms", record), kernel_hashes=tuple(hashes))


@dataclass(frozen=True)
class Measurement:
    """One kernel's measured latency as uploaded and stored: canonical key, its hash, percentiles in ms."""

    key: dict[str, Any]
    key_hash: str
    op_type: str
    bits: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "key": self.key, "key_hash": self.key_hash, "op_type": self.op_type,
                "bits": self.bits, "median_ms": self.median_ms, "p10_ms": self.p10_ms, "p90_ms": self.p90_ms,
                "repeats": self.repeats}

    @classmethod
    def from_dict(cls, data: object) -> Measurement:
        record = "measurement"
        mapping = _check_version(data, record)
        key = mapping.get("key")
        if not isinstance(key, Mapping):
            raise InvalidRecordError(f"{record}: key must be an object")
        median_ms = _required_number(mapping, "median_ms", record)
        return cls(key=dict(key), key_hash=_string(mapping, "key_hash", record),
                   op_type=_string(mapping, "op_type", record, str(key.get("op_type", ""))),
                   bits=_integer(mapping, "bits", record, int(key.get("bits", 32) or 32)), median_ms=median_ms,
                   p10_ms=_number(mapping, "p10_ms", record, median_ms) or median_ms,
                   p90_ms=_number(mapping, "p90_ms", record, median_ms) or median_ms,
                   repeats=_integer(mapping, "repeats", record, 1))


@dataclass(frozen=True)
class RunReport:
    """What a profiling run did: coverage per op type, flat axes found, drift seen, reference kernels' times and
    the models' end-to-end timings (profiler.runner builds it; see its fields there)."""

    run_id: str = ""
    device: str = ""
    items_done: tuple[str, ...] = ()
    items_skipped: int = 0
    items_failed: tuple[str, ...] = ()
    measured_per_op: dict[str, int] = field(default_factory=dict)
    flat_axes: dict[str, list[str]] = field(default_factory=dict)
    flat_evidence: dict[str, dict[str, float]] = field(default_factory=dict)
    drift: tuple[dict[str, Any], ...] = ()
    reference_ms: float | None = None  # the fp32 reference's, as references["fp32"]
    baseline_reference_ms: float | None = None  # as baseline_references["fp32"]
    references: dict[str, float] = field(default_factory=dict)
    baseline_references: dict[str, float] = field(default_factory=dict)
    end_to_end: tuple[Timing, ...] = ()
    elapsed_s: float = 0.0
    budget_minutes: float | None = None
    stopped_by: str = ""
    clock: str = "wall"
    paired: bool = False
    refinement: dict[str, Any] | None = None
    context_probes: tuple[dict[str, Any], ...] = ()
    profiler_costs_us: dict[str, float] | None = None
    remeasured: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "run_id": self.run_id,
            "device": self.device,
            "items_done": list(self.items_done),
            "items_skipped": self.items_skipped,
            "items_failed": list(self.items_failed),
            "measured_per_op": dict(sorted(self.measured_per_op.items())),
            "flat_axes": self.flat_axes,
            "flat_evidence": self.flat_evidence,
            "drift": list(self.drift),
            "reference_ms": self.reference_ms,
            "baseline_reference_ms": self.baseline_reference_ms,
            "references": dict(self.references),
            "baseline_references": dict(self.baseline_references),
            "end_to_end": [timing.to_dict() for timing in self.end_to_end],
            "elapsed_s": round(self.elapsed_s, 1),
            "budget_minutes": self.budget_minutes,
            "stopped_by": self.stopped_by,
            "clock": self.clock,
            "paired": self.paired,
            "refinement": self.refinement,
            "context_probes": list(self.context_probes),
            "profiler_costs_us": self.profiler_costs_us,
            "remeasured": list(self.remeasured),
        }

    @classmethod
    def from_dict(cls, data: object) -> RunReport:
        """The report a dict holds (fields it lacks take their defaults: older and partial reports load)."""
        record = "run report"
        mapping = _check_version(data, record)
        flat_axes = _mapping(mapping, "flat_axes", record)
        if not all(isinstance(axes, list | tuple) and all(isinstance(a, str) for a in axes)
                   for axes in flat_axes.values()):
            raise InvalidRecordError(f"{record}: flat_axes must map op types to lists of axis names")
        evidence = _mapping(mapping, "flat_evidence", record)
        drift = _list(mapping, "drift", record)
        probes = _list(mapping, "context_probes", record)
        remeasured = _list(mapping, "remeasured", record)
        if not all(isinstance(entry, Mapping) for entry in [*drift, *probes, *remeasured, *evidence.values()]):
            raise InvalidRecordError(f"{record}: drift, context_probes, remeasured and flat_evidence hold objects")
        refinement = mapping.get("refinement")
        if refinement is not None and not isinstance(refinement, Mapping):
            raise InvalidRecordError(f"{record}: refinement must be an object")
        costs = mapping.get("profiler_costs_us")
        items_done = _list(mapping, "items_done", record)
        items_failed = _list(mapping, "items_failed", record)
        if not all(isinstance(item, str) for item in [*items_done, *items_failed]):
            raise InvalidRecordError(f"{record}: items_done and items_failed hold strings")
        return cls(
            run_id=_string(mapping, "run_id", record),
            device=_string(mapping, "device", record),
            items_done=tuple(items_done),
            items_skipped=_integer(mapping, "items_skipped", record),
            items_failed=tuple(items_failed),
            measured_per_op={op: int(_required_number(counts, op, f"{record}.measured_per_op"))
                             for counts in [_mapping(mapping, "measured_per_op", record)] for op in counts},
            flat_axes={op: list(axes) for op, axes in flat_axes.items()},
            flat_evidence={op: dict(values) for op, values in evidence.items()},
            drift=tuple(dict(entry) for entry in drift),
            reference_ms=_number(mapping, "reference_ms", record),
            baseline_reference_ms=_number(mapping, "baseline_reference_ms", record),
            references=_numbers(mapping, "references", record),
            baseline_references=_numbers(mapping, "baseline_references", record),
            end_to_end=tuple(Timing.from_dict(sample) for sample in _list(mapping, "end_to_end", record)),
            elapsed_s=_number(mapping, "elapsed_s", record, 0.0) or 0.0,
            budget_minutes=_number(mapping, "budget_minutes", record),
            stopped_by=_string(mapping, "stopped_by", record),
            clock=_string(mapping, "clock", record, "wall"),
            paired=bool(mapping.get("paired")),
            refinement=None if refinement is None else dict(refinement),
            context_probes=tuple(dict(row) for row in probes),
            profiler_costs_us=None if costs is None else _numbers(mapping, "profiler_costs_us", record),
            remeasured=tuple(dict(entry) for entry in remeasured),
        )

    def reference_of(self, kind: str, baseline: bool = True) -> float | None:
        """The `kind` reference kernel's time: its baseline, or (`baseline` False) its time at the run's start.

        Every kind's are in baseline_references / references (reports since the int8 reference); the fp32
        reference's also in baseline_reference_ms / reference_ms, the only place older reports have them.
        """
        value = (self.baseline_references if baseline else self.references).get(kind)
        if value is None and kind == "fp32":
            value = self.baseline_reference_ms if baseline else self.reference_ms
        return value if value is not None and value > 0 else None


class _HasReport(Protocol):
    @property
    def report(self) -> dict[str, Any] | None: ...


def reports_of(runs: Iterable[_HasReport]) -> list[RunReport]:
    """The reports of stored runs, in their order (a run without one yet reads as an empty report)."""
    return [RunReport.from_dict(run.report or {}) for run in runs]
