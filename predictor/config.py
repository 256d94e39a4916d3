"""Compression configs: per-layer bit-width, sparsity and pruning, resolved against a model's node names."""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable
from dataclasses import dataclass
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
        default=None, description="32 fp32, 16 fp16, 8 static QDQ int8 (per-channel), 4 weight-only int4 (MatMul/Gemm)"
    )
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

    @property
    def is_identity(self) -> bool:
        return (self.bits == 32 and self.sparsity == 0.0 and self.prune_ratio == 0.0
                and self.sparsity_pattern != "2:4")


class CompressionConfig(BaseModel):
    """`{"default": {...}, "layers": {"<node name or glob>": {...}}}`; later matching layer entries win."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: LayerCompression = Field(default_factory=LayerCompression)
    layers: dict[str, LayerCompression] = Field(default_factory=dict)
    # Resolution per node name: asked once per layer per question, on the hot path of ranking.
    _resolved: dict[str, ResolvedCompression] = PrivateAttr(default_factory=dict)

    def resolve(self, node_name: str) -> ResolvedCompression:
        cached = self._resolved.get(node_name)
        if cached is not None:
            return cached
        merged: dict[str, Any] = {}
        for part in [self.default, *(spec for pattern, spec in self.layers.items()
                                     if fnmatch.fnmatchcase(node_name, pattern))]:
            merged.update({k: v for k, v in part.model_dump().items() if v is not None})
        resolved = ResolvedCompression(**merged)
        self._resolved[node_name] = resolved
        return resolved

    def check_patterns(self, node_names: Iterable[str]) -> None:
        """Raise ConfigError for a layer pattern that matches no node of the model."""
        names = list(node_names)
        for pattern in self.layers:
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


def parse_config(data: Any) -> CompressionConfig:
    """Validate a config document; ConfigError names the offending field."""
    if data is None:
        return CompressionConfig()
    try:
        return CompressionConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"invalid compression config at {where}: {first['msg']}") from exc


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
