"""What a prediction answers: an Estimate of one model, a Ranking of candidate configs (typed, JSON both ways).

These records cross the REST boundary: `to_dict` writes the documents `POST /api/predict` and `/api/rank`
answer, and `from_dict` reads them back (the Python API's remote mode). Plain values only, so that a client
reads them without onnx or the store.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:
    from predictor.kernels.keys import KernelKey

__all__ = ["Estimate", "KernelEstimate", "RankedCandidate", "Ranking"]


def _interval(value: Any) -> tuple[float, float]:
    low, high = value
    return float(low), float(high)


@dataclass(frozen=True)
class KernelEstimate:
    """One kernel's predicted latency and where the number came from (table, regressor, fallback)."""

    name: str
    op_type: str
    latency_ms: float
    interval_ms: tuple[float, float]
    source: str
    key_hash: str
    nodes: tuple[str, ...] = ()
    # The kernel's key where it was predicted here; None in an answer read back from a service (it sends the hash).
    key: KernelKey | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op_type": self.op_type,
            "latency_ms": self.latency_ms,
            "interval_ms": list(self.interval_ms),
            "source": self.source,
            "key_hash": self.key_hash,
            "nodes": list(self.nodes),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelEstimate:
        return cls(name=str(data["name"]), op_type=str(data["op_type"]), latency_ms=float(data["latency_ms"]),
                   interval_ms=_interval(data["interval_ms"]), source=str(data["source"]),
                   key_hash=str(data["key_hash"]), nodes=tuple(str(node) for node in data.get("nodes", ())))


@dataclass(frozen=True)
class Estimate:
    """A model's predicted latency on a device, with the per-kernel breakdown."""

    device: str
    latency_ms: float
    interval_ms: tuple[float, float]
    table_hit_rate: float
    overhead_ms: float
    kernels: list[KernelEstimate]
    warnings: list[str] = field(default_factory=list)
    # False when the figure rests on guesses: kernels of unknown shape, or fallbacks carrying much of the time.
    reliable: bool = True
    # The state the figure is in: the device's reference kernels' times (ms) when its table was profiled; a
    # measurement scaled to them is what the prediction is held against (empty: raw times).
    baseline_reference_ms: dict[str, float] = field(default_factory=dict)

    @property
    def sources(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for kernel in self.kernels:
            counts[kernel.source] = counts.get(kernel.source, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "latency_ms": self.latency_ms,
            "interval_ms": list(self.interval_ms),
            "table_hit_rate": self.table_hit_rate,
            "overhead_ms": self.overhead_ms,
            "sources": self.sources,
            "reliable": self.reliable,
            "baseline_reference_ms": dict(self.baseline_reference_ms),
            "warnings": list(self.warnings),
            "kernels": [k.to_dict() for k in self.kernels],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Estimate:
        """An Estimate from `to_dict`'s document or a service's predict answer (its other fields are left)."""
        return cls(
            device=str(data["device"]),
            latency_ms=float(data["latency_ms"]),
            interval_ms=_interval(data["interval_ms"]),
            table_hit_rate=float(data["table_hit_rate"]),
            overhead_ms=float(data["overhead_ms"]),
            kernels=[KernelEstimate.from_dict(kernel) for kernel in data.get("kernels", ())],
            warnings=[str(warning) for warning in data.get("warnings", ())],
            reliable=bool(data.get("reliable", True)),
            baseline_reference_ms={str(kind): float(ms) for kind, ms in
                                   (data.get("baseline_reference_ms") or {}).items()},
        )


@dataclass(frozen=True)
class RankedCandidate:
    """One candidate config's predicted latency and its speedup over the uncompressed model."""

    name: str
    latency_ms: float
    interval_ms: tuple[float, float]
    speedup: float
    # Whether the speedup reaches the ranking's target_speedup (None: no target asked).
    meets_target: bool | None
    table_hit_rate: float
    sources: dict[str, int]
    reliable: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "latency_ms": self.latency_ms,
            "interval_ms": list(self.interval_ms),
            "speedup": self.speedup,
            "meets_target": self.meets_target,
            "table_hit_rate": self.table_hit_rate,
            "sources": dict(self.sources),
            "reliable": self.reliable,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankedCandidate:
        meets = data.get("meets_target")
        return cls(name=str(data["name"]), latency_ms=float(data["latency_ms"]),
                   interval_ms=_interval(data["interval_ms"]), speedup=float(data["speedup"]),
                   meets_target=None if meets is None else bool(meets),
                   table_hit_rate=float(data["table_hit_rate"]),
                   sources={str(source): int(count) for source, count in (data.get("sources") or {}).items()},
                   reliable=bool(data.get("reliable", True)),
                   warnings=[str(warning) for warning in data.get("warnings", ())])


@dataclass(frozen=True)
class Ranking(Sequence[RankedCandidate]):
    """Candidate configs ranked by predicted latency, fastest first: a sequence of RankedCandidate, with the
    uncompressed model's latency (`baseline_ms`) every speedup is measured against."""

    device: str
    baseline_ms: float
    baseline_interval_ms: tuple[float, float]
    candidates: tuple[RankedCandidate, ...]
    target_speedup: float | None = None

    @overload
    def __getitem__(self, index: int) -> RankedCandidate: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[RankedCandidate]: ...

    def __getitem__(self, index: int | slice) -> RankedCandidate | Sequence[RankedCandidate]:
        return self.candidates[index]

    def __len__(self) -> int:
        return len(self.candidates)

    def __iter__(self) -> Iterator[RankedCandidate]:
        return iter(self.candidates)

    def by_name(self, name: str) -> RankedCandidate:
        """The candidate of that name (KeyError naming the ones there are)."""
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; ranked: {', '.join(c.name for c in self.candidates)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "baseline_ms": self.baseline_ms,
            "baseline_interval_ms": list(self.baseline_interval_ms),
            "target_speedup": self.target_speedup,
            "ranked": [candidate.to_dict() for candidate in self.candidates],
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Ranking:
        """A Ranking from `to_dict`'s document, predictor.estimation.prepared.rank_candidates' or a service's rank
        answer; the candidates are put fastest first whatever their order there."""
        target = data.get("target_speedup")
        candidates = sorted((RankedCandidate.from_dict(row) for row in data.get("ranked", ())),
                            key=lambda candidate: candidate.latency_ms)
        return cls(device=str(data["device"]), baseline_ms=float(data["baseline_ms"]),
                   baseline_interval_ms=_interval(data["baseline_interval_ms"]), candidates=tuple(candidates),
                   target_speedup=None if target is None else float(target))
