"""A model prepared once for many questions: fixed shapes, base kernels, and kernels per config (cached)."""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import onnx

from predictor.compression.apply import apply_config
from predictor.compression.config import CompressionConfig, parse_config
from predictor.compression.fastpath import FastConfigPath
from predictor.compression.pruning import analyze_channel_groups
from predictor.errors import LatpredError
from predictor.estimation.estimate import DevicePredictor, Estimate
from predictor.kernels.keys import Kernel, KernelKey, extract_kernels, name_unnamed_nodes
from predictor.memo import BoundedMemo
from predictor.model.graph import model_inputs, set_input_shapes
from predictor.runtime.devices import config_categories, model_categories
from predictor.runtime.optimizer import RuntimeSpec

__all__ = ["PreparedModel", "model_id_of", "predict_config", "rank_candidates", "weight_layers"]

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
    _cache: BoundedMemo[str, list[Kernel]] = field(
        default_factory=lambda: BoundedMemo(_CACHE_ENTRIES, lru=True), repr=False)
    _fast: FastConfigPath | None = field(default=None, repr=False)
    _fast_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _names: frozenset[str] | None = field(default=None, repr=False)
    _prunable: frozenset[str] | None = field(default=None, repr=False)
    _layers: dict[str, str] | None = field(default=None, repr=False)
    _categories: frozenset[str] | None = field(default=None, repr=False)

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

    def weight_layers(self) -> dict[str, str]:
        """`weight_layers(self.model)`, read once: every config's warnings are checked against them."""
        if self._layers is None:
            self._layers = weight_layers(self.model)
        return self._layers

    def categories(self, config: CompressionConfig | None = None) -> set[str]:
        """`categories_of(self.model, config)`, with the model's own part read once."""
        if self._categories is None:
            self._categories = model_categories(self.model)
        return {*self._categories, *config_categories(self._node_name_set(), config)}

    def compressed(self, config: CompressionConfig) -> onnx.ModelProto:
        """The really compressed model (what `latpred measure` runs)."""
        return apply_config(self.model, config)

    def kernels(self, config: CompressionConfig | None = None) -> list[Kernel]:
        """Kernels the runtime executes for the model compressed by `config` (cached per config)."""
        config = config or CompressionConfig()
        resolved = config

        def extract() -> list[Kernel]:
            resolved.check_patterns(self._node_name_set())
            return extract_kernels(self.compressed(resolved), self.runtime)

        return self._cache.get_or_compute(config.canonical_json(), extract)


    def config_warnings(self, config: CompressionConfig, kernels: Sequence[Kernel] | None = None) -> list[str]:
        """What a config asks of this model that it cannot do, said out loud: layers pruning leaves whole,
        layers int4 does not apply to, and a config that changes no kernel at all (`kernels`: its kernels)."""
        if config.is_identity:
            return []
        warnings: list[str] = []
        resolve = config.resolver()
        layers = self.weight_layers()
        pruned = [name for name in layers if resolve(name).prune_ratio > 0]
        if pruned:
            if self._prunable is None:
                self._prunable = frozenset(name for names in analyze_channel_groups(self.model)
                                           .prunable_spaces().values() for name in names)
            whole = [name for name in pruned if name not in self._prunable]
            if whole:
                reason = ("their output channels feed a reshape or transpose (attention projections), the model's "
                          "output (a classifier) or a grouped conv, or their weights are quantized already (QDQ, int4: "
                          "prune the float model, then quantize), so they keep them")
                examples = ", ".join(whole[:3]) + (", ..." if len(whole) > 3 else "")
                if len(whole) == len(pruned):
                    warnings.append(f"prune_ratio changes nothing in this model: none of the {len(pruned)} layers it "
                                    f"names can lose output channels; {reason} ({examples})")
                else:
                    warnings.append(f"prune_ratio leaves {len(whole)} of the {len(pruned)} layers it names whole: "
                                    f"{reason} ({examples})")
        int4 = [name for name, op in layers.items() if resolve(name).bits == 4]
        not_matmul = [name for name in int4 if layers[name] not in ("MatMul", "Gemm")]
        if not_matmul:
            warnings.append(f"bits 4 (weight-only int4, MatMulNBits) applies to MatMul and Gemm layers: "
                            f"{len(not_matmul)} of the {len(int4)} layers it names stay at their precision "
                            f"({', '.join(not_matmul[:3])}{', ...' if len(not_matmul) > 3 else ''})")
        if kernels is not None:
            base = Counter(k.key.key_hash for k in self.kernels())
            if Counter(k.key.key_hash for k in kernels) == base:
                warnings.append("the config changes no kernel of this model: its prediction is the uncompressed one")
        return warnings

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


def weight_layers(model: onnx.ModelProto) -> dict[str, str]:
    """The model's layers with weights (Conv, Gemm, MatMul and their quantized forms with a constant weight), by node
    name -> op type."""
    constants = {init.name for init in model.graph.initializer}
    for node in model.graph.node:
        if node.input and all(not name or name in constants for name in node.input):
            constants.update(o for o in node.output if o)
    return {node.name: node.op_type for node in model.graph.node
            if node.op_type in _LAYER_OPS and len(node.input) > 1 and node.input[1] in constants}


# Layers with their weight as input 1: float, and as onnxruntime's quantizers leave them (dynamic int8, int4).
_LAYER_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
              "DynamicQuantizeMatMul", "MatMulNBits"}


def predict_config(predictor: DevicePredictor, prepared: PreparedModel,
                   config: CompressionConfig | None = None) -> Estimate:
    """The model compressed by `config` predicted on the device, with what the config could not do among its
    warnings (the answer of `latpred predict` and `POST /api/predict`)."""
    config = config or CompressionConfig()
    categories = prepared.categories(config) if predictor.device_kernels is not None else set()
    if predictor.device_kernels is not None:
        predictor.device_kernels.check(categories)
    kernels = prepared.kernels(config)
    if predictor.device_kernels is not None:
        predictor.device_kernels.check(categories, {k.op_type for k in kernels})
    estimate = predictor.estimate(kernels)
    warnings = prepared.config_warnings(config, kernels)
    return replace(estimate, warnings=[*warnings, *estimate.warnings]) if warnings else estimate


def rank_candidates(
    predictor: DevicePredictor,
    prepared: PreparedModel,
    candidates: Sequence[tuple[str, Any]],
    target_speedup: float | None = None,
    fast: bool = False,
    skip_failed: bool = False,
) -> dict[str, Any]:
    """Baseline and each candidate's predicted latency, interval and speedup; fastest first.

    `fast`: kernels from the learned transformations (no runtime session per config) instead of
    compressing and optimizing each candidate for real.
    `skip_failed`: a candidate that fails with a LatpredError (a bad config, kernels the device cannot reproduce)
    is listed under "failed" with its error and the others are ranked; otherwise the error is raised.
    """
    names: list[str] = []
    key_lists: list[list[KernelKey]] = []
    config_warnings: list[list[str]] = []
    failed: list[dict[str, str]] = []
    for name, raw in candidates:
        try:
            config = raw if isinstance(raw, CompressionConfig) else parse_config(raw)
            categories = prepared.categories(config) if predictor.device_kernels is not None else set()
            if predictor.device_kernels is not None:
                predictor.device_kernels.check(categories)
            # Ranking needs each candidate's totals only: keys go in, no per-kernel breakdown comes out.
            keys = prepared.fast_keys(config) if fast else [k.key for k in prepared.kernels(config)]
            if predictor.device_kernels is not None:
                predictor.device_kernels.check(categories, {key.op_type for key in keys})
            warnings = prepared.config_warnings(config)
        except LatpredError as exc:
            if not skip_failed:
                raise
            failed.append({"name": name, "error": str(exc)})
            continue
        names.append(name)
        key_lists.append(list(keys))
        config_warnings.append(warnings)
    baseline_keys = [k.key for k in prepared.kernels()]
    baseline, *estimates = predictor.summarize_many([baseline_keys, *key_lists])
    ranked: list[dict[str, Any]] = []
    for name, estimate, warnings in zip(names, estimates, config_warnings, strict=True):
        speedup = baseline.latency_ms / estimate.latency_ms
        ranked.append({
            "name": name,
            "latency_ms": estimate.latency_ms,
            "interval_ms": list(estimate.interval_ms),
            "speedup": speedup,
            "meets_target": None if target_speedup is None else bool(speedup >= target_speedup),
            "table_hit_rate": estimate.table_hit_rate,
            "sources": estimate.sources,
            "reliable": estimate.reliable,
            "warnings": [*warnings, *estimate.warnings],
        })
    ranked.sort(key=lambda row: row["latency_ms"])
    return {
        "device": predictor.device,
        "baseline_ms": baseline.latency_ms,
        "baseline_interval_ms": list(baseline.interval_ms),
        "target_speedup": target_speedup,
        "ranked": ranked,
        "failed": failed,
    }
