"""What to profile, in priority order: the user's model first, then real architectures, then random variants.

A work item is a whole (compressed) model: profiling it measures every kernel it contains in the
context it really runs in, and its end-to-end time teaches the device's per-run overhead.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnx

from predictor.config import CompressionConfig, parse_config
from profiler.skeleton import load_skeleton, materialize_skeleton

__all__ = [
    "DEFAULT_PRIORS_DIR",
    "RANDOM_SIZES",
    "WorkItem",
    "default_plan",
    "model_plan",
    "prior_index",
    "random_variants",
    "resizable_priors",
    "variant_item",
]

logger = logging.getLogger(__name__)

DEFAULT_PRIORS_DIR = Path(__file__).resolve().parents[1] / "data" / "priors"

# Stages of the default space. Sparsity stages stop early for op types where the axis proves flat.
_PRIOR_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}),
    ("int8", {"default": {"bits": 8}}),
    ("prune30", {"default": {"prune_ratio": 0.3}}),
    ("prune50_r8", {"default": {"prune_ratio": 0.5, "round_to": 8}}),
    ("int8_prune30", {"default": {"bits": 8, "prune_ratio": 0.3}}),
    ("prune50", {"default": {"prune_ratio": 0.5}}),
    ("fp16", {"default": {"bits": 16}}),
    ("int4", {"default": {"bits": 4}}),
]
SPARSITY_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("sparse50", {"default": {"sparsity": 0.5}}),
    ("sparse2of4", {"default": {"sparsity_pattern": "2:4"}}),
    ("sparse75", {"default": {"sparsity": 0.75}}),
    ("sparse90", {"default": {"sparsity": 0.9}}),
    ("sparse95", {"default": {"sparsity": 0.95}}),
]
RANDOM_SIZES = [96, 128, 160, 192, 256]


@dataclass(frozen=True)
class WorkItem:
    """One model to build and profile."""

    label: str
    build: Callable[[], onnx.ModelProto]
    config: CompressionConfig
    stage: str
    architecture: str = ""
    # Where a prior's variant comes from (the skeleton file and input size): what refinement varies.
    prior_file: str = ""
    image_size: int | None = None

    @property
    def item_id(self) -> str:
        digest = hashlib.sha256(f"{self.label}|{self.config.canonical_json()}".encode()).hexdigest()
        return digest[:16]

    @property
    def is_sparsity(self) -> bool:
        return self.stage == "sparsity"


def prior_index(priors_dir: Path = DEFAULT_PRIORS_DIR) -> list[dict[str, Any]]:
    """The prior architectures (skeleton files) in priority order."""
    index_path = priors_dir / "index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"no op-space priors at {priors_dir} (expected index.json)")
    entries = json.loads(index_path.read_text())["priors"]
    return sorted(entries, key=lambda e: (e["priority"], -e["image_size"]))


def _skeleton_builder(path: Path, size_override: int | None = None, seed: int = 0) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        skeleton = load_skeleton(path)
        shapes = None
        if size_override is not None:
            shapes = {v["name"]: [v["shape"][0], v["shape"][1], size_override, size_override]
                      for v in skeleton["inputs"]}
        return materialize_skeleton(skeleton, seed=seed, input_shapes=shapes)

    return build


def variant_item(priors_dir: Path, entry: dict[str, Any], size: int | None, config: dict[str, Any], stage: str,
                 name: str, seed: int) -> WorkItem:
    """A prior architecture at input size `size` (None: its own) under `config`, labelled `<stem>@<size>/<name>`."""
    image_size = size or int(entry["image_size"])
    return WorkItem(label=f"{Path(entry['file']).stem}@{image_size}/{name}",
                    build=_skeleton_builder(priors_dir / entry["file"], size, seed=seed),
                    config=parse_config(config), stage=stage, architecture=entry["architecture"],
                    prior_file=entry["file"], image_size=image_size)


def random_variants(priors_dir: Path = DEFAULT_PRIORS_DIR, seed: int = 0) -> Iterator[WorkItem]:
    """Random variants of the priors without end: input sizes, prune ratios, rounding and bit-widths."""
    entries = prior_index(priors_dir)
    rng = random.Random(seed)
    resizable = resizable_priors(priors_dir)
    counter = 0
    while True:
        counter += 1
        entry = rng.choice(entries)
        size = rng.choice(RANDOM_SIZES) if entry["file"] in resizable else None
        variant: dict[str, Any] = {"default": {"prune_ratio": round(rng.uniform(0.1, 0.7), 2),
                                               "bits": rng.choice([32, 32, 8])}}
        if rng.random() < 0.3:
            variant["default"]["round_to"] = rng.choice([4, 8, 16])
        yield variant_item(priors_dir, entry, size, variant, "random", f"random{counter}", seed=counter)


def default_plan(priors_dir: Path = DEFAULT_PRIORS_DIR, seed: int = 0,
                 then: Iterable[WorkItem] | None = None) -> Iterator[WorkItem]:
    """Real architectures under each config, then sparsity, then `then` (default: random variants without end).

    `then` is where adaptive refinement (profiler.refine) goes: it sees each item's measurements before it
    chooses the next.
    """
    entries = prior_index(priors_dir)
    for stage, configs in (("priors", _PRIOR_CONFIGS), ("sparsity", SPARSITY_CONFIGS)):
        for config_name, raw in configs:
            for entry in entries:
                if config_name == "int4" and "vit" not in entry["architecture"]:
                    continue  # weight-only int4 applies to MatMul/Gemm: transformer layers
                if stage == "sparsity" and entry["image_size"] != 224:
                    continue
                label = f"{Path(entry['file']).stem}/{config_name}"
                yield WorkItem(label=label, build=_skeleton_builder(priors_dir / entry["file"]),
                               config=parse_config(raw), stage=stage, architecture=entry["architecture"],
                               prior_file=entry["file"], image_size=int(entry["image_size"]))
    yield from then if then is not None else random_variants(priors_dir, seed)


@lru_cache(maxsize=8)
def resizable_priors(priors_dir: Path = DEFAULT_PRIORS_DIR) -> frozenset[str]:
    """Skeleton files of the priors that run at other input sizes (each skeleton is read once per folder)."""
    return frozenset(e["file"] for e in prior_index(priors_dir) if _resizable(load_skeleton(priors_dir / e["file"])))


def _resizable(skeleton: dict[str, Any]) -> bool:
    """True if the architecture runs at other input sizes: no reshape spells out spatial dims, no Flatten of a map."""
    shapes = {name: entry.get("values") for name, entry in skeleton["initializers"].items()}
    for node in skeleton["nodes"]:
        if node["op"] == "Reshape" and len(node["inputs"]) > 1 and len(shapes.get(node["inputs"][1]) or []) >= 4:
            return False
        if node["op"] == "Flatten" and not any(n["op"].startswith("Global") and node["inputs"][0] in n["outputs"]
                                               for n in skeleton["nodes"]):
            return False
    return True


def model_plan(model: onnx.ModelProto, name: str, configs: list[tuple[str, CompressionConfig]]) -> list[WorkItem]:
    """Exactly what one model and its compressed variants need (`--for-model`)."""
    def build() -> onnx.ModelProto:
        return model

    items = [WorkItem(label=f"{name}/fp32", build=build, config=CompressionConfig(), stage="model",
                      architecture=name)]
    for config_name, config in configs:
        if config.is_identity:
            continue
        items.append(WorkItem(label=f"{name}/{config_name}", build=build, config=config, stage="model",
                              architecture=name))
    return items
