"""Compression configs: per-layer bit-width, sparsity and pruning, resolved against a model's node names."""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from predictor.errors import ConfigError

__all__ = [
    "CompressionConfig",
    "LayerCompression",
    "ResolvedCompression",
    "config_json_schema",
    "load_config",
    "parse_config",
]


class LayerCompression(BaseModel):
    """Compression of one layer (or the default for all layers); unset fields inherit."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: Literal[32, 16, 8, 4] | None = Field(
        default=None, description="32 fp32, 16 fp16, 8 int8 (see quantization), 4 weight-only int4 (MatMul/Gemm)"
    )
    quantization: Literal["static", "dynamic"] | None = Field(
        default=None,
        description="how bits 8 quantizes: static QDQ with per-channel weights (onnxruntime's quantize_static, the "
                    "default) or dynamic (onnxruntime's quantize_dynamic: int8 weights, activations quantized at run "
                    "time, MatMulInteger / DynamicQuantizeMatMul; what transformers run on CPU)",
    )
    per_channel: bool | None = Field(
        default=None,
        description="static int8: one weight scale per output channel (true, the default) or one per tensor "
                    "(false, quantize_static's own default); the whole model's (set it in default)")
    activation_type: Literal["uint8", "int8"] | None = Field(
        default=None,
        description="static int8: activations as uint8 (the default: U8S8, what onnxruntime recommends on x86) or "
                    "int8 (S8S8, quantize_static's own default); the whole model's (set it in default)")
    sparsity: float | None = Field(default=None, ge=0.0, le=0.99, description="share of weights zeroed by magnitude")
    sparsity_pattern: Literal["unstructured", "2:4"] | None = Field(default=None)
    prune_ratio: float | None = Field(
        default=None, ge=0.0, le=0.9, description="share of output channels removed (structured pruning)"
    )
    round_to: int | None = Field(default=None, ge=1, le=256, description="kept channels rounded down to a multiple")


@dataclass(frozen=True)
class ResolvedCompression:
    """The compression one node gets after defaults and layer overrides."""

    bits: int = 32
    sparsity: float = 0.0
    sparsity_pattern: str = "unstructured"
    prune_ratio: float = 0.0
    round_to: int = 1
    quantization: str = "static"
    per_channel: bool = True
    activation_type: str = "uint8"

    @property
    def dynamic_int8(self) -> bool:
        return self.bits == 8 and self.quantization == "dynamic"

    @property
    def is_identity(self) -> bool:
        return (self.bits == 32 and self.sparsity == 0.0 and self.prune_ratio == 0.0
                and self.sparsity_pattern != "2:4")


_GLOB_CHARS = frozenset("*?[")


def _set_fields_of(spec: LayerCompression) -> dict[str, Any]:
    return {k: v for k, v in spec.model_dump().items() if v is not None}


@lru_cache(maxsize=4096)
def _resolution(fields: tuple[tuple[str, Any], ...]) -> ResolvedCompression:
    """One shared (immutable) resolution per distinct set of fields."""
    return ResolvedCompression(**dict(fields))


class CompressionConfig(BaseModel):
    """`{"default": {...}, "layers": {"<node name or glob>": {...}}}`; later matching layer entries win."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: LayerCompression = Field(default_factory=LayerCompression)
    layers: dict[str, LayerCompression] = Field(default_factory=dict)
    # Resolution per node name: asked once per layer per question, on the hot path of ranking.
    _resolved: dict[str, ResolvedCompression] = PrivateAttr(default_factory=dict)
    # The set fields of the default and of each layer entry, read once (model_dump per node was the cost).
    _parts: list[tuple[dict[str, Any], list[tuple[str, bool, dict[str, Any]]]]] = PrivateAttr(default_factory=list)

    def resolve(self, node_name: str) -> ResolvedCompression:
        """The compression `node_name` gets: the default, overridden by every matching layer entry in order."""
        return self.resolver()(node_name)

    def resolver(self) -> Callable[[str], ResolvedCompression]:
        """`resolve` as a plain function, for resolving many names (no model attribute access per call)."""
        resolved = self._resolved
        default_fields, layer_fields = self._set_fields()

        def resolve(node_name: str) -> ResolvedCompression:
            cached = resolved.get(node_name)
            if cached is not None:
                return cached
            merged = default_fields
            for pattern, literal, fields in layer_fields:
                if (node_name == pattern) if literal else fnmatch.fnmatchcase(node_name, pattern):
                    merged = {**merged, **fields}
            result = resolved[node_name] = _resolution(tuple(merged.items()))
            return result

        return resolve

    def resolutions(self, node_names: AbstractSet[str]) -> set[ResolvedCompression]:
        """The distinct compressions the nodes get. Where every layer entry is a plain node name, a node no entry
        names gets the default, so one such node stands for them all."""
        _, layer_fields = self._set_fields()
        names: Iterable[str] = node_names
        if all(literal for _, literal, _ in layer_fields):
            named = [pattern for pattern in self.layers if pattern in node_names]
            other = next((name for name in node_names if name not in self.layers), None)
            names = named if other is None else [*named, other]
        return set(map(self.resolver(), names))

    def _set_fields(self) -> tuple[dict[str, Any], list[tuple[str, bool, dict[str, Any]]]]:
        if not self._parts:
            layer_fields = [(pattern, not _GLOB_CHARS.intersection(pattern), _set_fields_of(spec))
                            for pattern, spec in self.layers.items()]
            self._parts.append((_set_fields_of(self.default), layer_fields))
        return self._parts[0]

    def check_patterns(self, node_names: Iterable[str]) -> None:
        """Raise ConfigError for a layer pattern that matches no node of the model."""
        if not self.layers:
            return
        names = node_names if isinstance(node_names, (set, frozenset)) else list(node_names)
        for pattern in self.layers:
            if not _GLOB_CHARS.intersection(pattern) and pattern in names:
                continue
            if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
                raise ConfigError(f"config layer pattern {pattern!r} matches no node of the model")

    @property
    def is_identity(self) -> bool:
        return self.resolve("").is_identity and all(
            ResolvedCompression(**{k: v for k, v in spec.model_dump().items() if v is not None}).is_identity
            for spec in self.layers.values()
        )

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))


_MODEL_WIDE = ("per_channel", "activation_type")


def parse_config(data: Any) -> CompressionConfig:
    """Validate a config document; ConfigError names the offending field."""
    if data is None:
        return CompressionConfig()
    try:
        config = CompressionConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"invalid compression config at {where}: {first['msg']}") from exc
    for pattern, spec in config.layers.items():
        for name in _MODEL_WIDE:
            if getattr(spec, name) is not None and getattr(spec, name) != getattr(config.default, name):
                raise ConfigError(f"invalid compression config at layers.{pattern}.{name}: {name} applies to the "
                                  "whole model's int8 quantization; set it in default")
    return config


def load_config(path: str | Path) -> CompressionConfig:
    """Read and validate a config JSON file."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return parse_config(data)


def config_json_schema() -> dict[str, Any]:
    """The published JSON schema of compression configs."""
    return CompressionConfig.model_json_schema()
