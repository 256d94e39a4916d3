"""A model prepared once for many questions: fixed shapes, base kernels, and kernels per config (cached)."""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from predictor.compress import apply_config
from predictor.config import CompressionConfig, parse_config
from predictor.estimate import DevicePredictor
from predictor.fastpath import FastConfigPath
from predictor.graph import model_inputs, set_input_shapes
from predictor.kernels import Kernel, KernelKey, extract_kernels, name_unnamed_nodes
from predictor.runtime import RuntimeSpec

__all__ = ["PreparedModel", "model_id_of", "rank_candidates"]

logger = logging.getLogger(__name__)

_CACHE_ENTRIES = 512


def model_id_of(data: bytes) -> str:
    """Content id of a model: sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class PreparedModel:
    """A model with fixed shapes on one runtime; kernels per config are computed once and cached."""

    model: onnx.ModelProto
    runtime: RuntimeSpec
    model_id: str = ""
    _cache: OrderedDict[str, list[Kernel]] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _fast: FastConfigPath | None = field(default=None, repr=False)
    _fast_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _names: frozenset[str] | None = field(default=None, repr=False)

    @classmethod
    def create(cls, model: onnx.ModelProto, runtime: RuntimeSpec,
               input_shapes: Mapping[str, list[int]] | None = None, model_id: str = "") -> PreparedModel:
        fixed = name_unnamed_nodes(set_input_shapes(model, input_shapes))
        prepared = cls(model=fixed, runtime=runtime, model_id=model_id or model_id_of(model.SerializeToString()))
        prepared.kernels(CompressionConfig())
        return prepared

    @property
    def inputs(self) -> dict[str, list[int | str | None]]:
        return model_inputs(self.model)

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.model.graph.node]

    def _node_name_set(self) -> frozenset[str]:
        """The node names as a set, read once: every config's layer patterns are checked against them."""
        if self._names is None:
            self._names = frozenset(self.node_names)
        return self._names

    def compressed(self, config: CompressionConfig) -> onnx.ModelProto:
        """The really compressed model (what `latpred measure` runs)."""
        return apply_config(self.model, config)

    def kernels(self, config: CompressionConfig | None = None) -> list[Kernel]:
        """Kernels the runtime executes for the model compressed by `config` (cached per config)."""
        config = config or CompressionConfig()
        cache_key = config.canonical_json()
        with self._lock:
            cached = self._cache.get(cache_key)
            if cached is not None:
                self._cache.move_to_end(cache_key)
                return cached
        config.check_patterns(self._node_name_set())
        kernels = extract_kernels(self.compressed(config), self.runtime)
        with self._lock:
            self._cache[cache_key] = kernels
            while len(self._cache) > _CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return kernels


    def fast_path(self) -> FastConfigPath:
        """The model's learned transformations (learned on first use: seconds, once per model)."""
        with self._fast_lock:
            if self._fast is None:
                self._fast = FastConfigPath.learn(self.model, self.runtime)
            return self._fast

    def fast_kernels(self, config: CompressionConfig) -> list[Kernel]:
        """Kernels for `config` at the kernel level: no quantizer run, no runtime session."""
        config.check_patterns(self._node_name_set())
        return self.fast_path().kernels(config)

    def fast_keys(self, config: CompressionConfig) -> list[KernelKey]:
        """The keys of `fast_kernels(config)`: what estimating its latency needs, built without Kernel objects."""
        config.check_patterns(self._node_name_set())
        return self.fast_path().keys(config)


def rank_candidates(
    predictor: DevicePredictor,
    prepared: PreparedModel,
    candidates: Sequence[tuple[str, Any]],
    target_speedup: float | None = None,
    fast: bool = False,
) -> dict[str, Any]:
    """Baseline and each candidate's predicted latency, interval and speedup; fastest first.

    `fast`: kernels from the learned transformations (no runtime session per config) instead of
    compressing and optimizing each candidate for real.
    """
    configs = [raw if isinstance(raw, CompressionConfig) else parse_config(raw) for _, raw in candidates]
    # Ranking needs each candidate's totals only: keys go in, no per-kernel breakdown comes out.
    key_lists = [prepared.fast_keys(c) if fast else [k.key for k in prepared.kernels(c)] for c in configs]
    baseline_keys = [k.key for k in prepared.kernels()]
    baseline, *estimates = predictor.summarize_many([baseline_keys, *key_lists])
    ranked: list[dict[str, Any]] = []
    for (name, _), estimate in zip(candidates, estimates, strict=True):
        speedup = baseline.latency_ms / estimate.latency_ms
        ranked.append({
            "name": name,
            "latency_ms": estimate.latency_ms,
            "interval_ms": list(estimate.interval_ms),
            "speedup": speedup,
            "meets_target": None if target_speedup is None else bool(speedup >= target_speedup),
            "table_hit_rate": estimate.table_hit_rate,
            "sources": estimate.sources,
        })
    ranked.sort(key=lambda row: row["latency_ms"])
    return {
        "device": predictor.device,
        "baseline_ms": baseline.latency_ms,
        "baseline_interval_ms": list(baseline.interval_ms),
        "target_speedup": target_speedup,
        "ranked": ranked,
    }
