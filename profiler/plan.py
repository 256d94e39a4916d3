"""What to profile, in priority order: the user's model first, then real architectures, then random variants.

A work item is a whole (compressed) model: profiling it measures every kernel it contains in the
context it really runs in, and its end-to-end time teaches the device's per-run overhead. The priors are
skeletons of real exports (data/priors, written by benchmarks/make_priors.py from torch.onnx.export and Hugging
Face files); each is profiled under latpred's configs and as onnxruntime's own quantizer leaves it (`tool`),
then at other batch sizes, input sizes and sequence lengths. The CNN priors run in float at batch 2, 4 and 8 early:
a batched conv does several times a batch-1 conv's work, past the range that batch-1 kernels teach the regressors.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from predictor.compression.apply import apply_config
from predictor.compression.config import CompressionConfig, parse_config
from predictor.packaged import packaged_data_dir
from profiler.skeleton import load_skeleton, materialize_skeleton
from profiler.tools import apply_tool

__all__ = [
    "DEFAULT_PRIORS_DIR",
    "RANDOM_BATCHES",
    "RANDOM_SEQUENCE_LENGTHS",
    "RANDOM_SIZES",
    "WorkItem",
    "default_plan",
    "input_shapes_for",
    "model_plan",
    "prior_index",
    "random_variants",
    "resizable_priors",
    "sizes_for",
    "variant_item",
]

logger = logging.getLogger(__name__)

DEFAULT_PRIORS_DIR = packaged_data_dir() / "priors"

_ALL = frozenset({"cnn", "vit", "text"})
_TRANSFORMERS = frozenset({"vit", "text"})
# Stages of the default space: (name, config, tool, families). A tool is what a user's own quantizer does to the
# file as it stands (profiler.tools); sparsity stages stop early for op types where the axis proves flat.
_Stage = tuple[str, dict[str, Any], str, frozenset[str]]
# What users do most to the models they compress: taken for the first priors before the others (a 30-minute profile
# of this 2-core host gets through the float priors and these for the first ones).
_MAIN_STAGES: list[_Stage] = [
    ("int8", {"default": {"bits": 8}}, "", _ALL),
    ("qdq_ort", {}, "quantize_static", _ALL),
    ("dynamic_int8", {"default": {"bits": 8, "quantization": "dynamic"}}, "", _TRANSFORMERS),
    ("int4", {"default": {"bits": 4}}, "", _TRANSFORMERS),
    ("prune30", {"default": {"prune_ratio": 0.3}}, "", _ALL),
    ("prune30_qdq_ort", {"default": {"prune_ratio": 0.3}}, "quantize_static", frozenset({"cnn"})),
    ("prune50", {"default": {"prune_ratio": 0.5}}, "", _ALL),
]
_LATE_STAGES: list[_Stage] = [
    ("prune50_r8", {"default": {"prune_ratio": 0.5, "round_to": 8}}, "", frozenset({"cnn"})),
    ("int8_prune30", {"default": {"bits": 8, "prune_ratio": 0.3}}, "", frozenset({"cnn"})),
    ("int8_s8_per_tensor", {"default": {"bits": 8, "per_channel": False, "activation_type": "int8"}}, "",
     frozenset({"cnn"})),
    ("fp16", {"default": {"bits": 16}}, "", _ALL),
]
# The resizable CNN priors in float at other batch sizes (batch, input side; None: the prior's own), right after the
# float pass: the batch-4 one for every prior, then the others.
_BATCH_VARIANTS: list[tuple[int, int | None]] = [(4, None), (2, 160), (8, 128)]
# How many priors (in priority order) take the main stages first.
_FIRST_PRIORS = 10
SPARSITY_CONFIGS: list[tuple[str, dict[str, Any]]] = [
    ("sparse50", {"default": {"sparsity": 0.5}}),
    ("sparse2of4", {"default": {"sparsity_pattern": "2:4"}}),
    ("sparse75", {"default": {"sparsity": 0.75}}),
    ("sparse90", {"default": {"sparsity": 0.9}}),
    ("sparse95", {"default": {"sparsity": 0.95}}),
]
RANDOM_SIZES = [96, 128, 160, 192, 256]
RANDOM_SEQUENCE_LENGTHS = [16, 32, 64, 128, 256, 384]
RANDOM_BATCHES = [1, 1, 1, 2, 4, 8]


@dataclass(frozen=True)
class WorkItem:
    """One model to build and profile."""

    label: str
    build: Callable[[], onnx.ModelProto]
    config: CompressionConfig
    stage: str
    architecture: str = ""
    # Where a prior's variant comes from (the skeleton file, batch and input size or sequence length): what
    # refinement varies.
    prior_file: str = ""
    size: int | None = None
    batch: int | None = None
    # A quantizer of the user's run on the config's result as it stands (profiler.tools), or "".
    tool: str = ""

    @property
    def item_id(self) -> str:
        digest = hashlib.sha256(f"{self.label}|{self.config.canonical_json()}|{self.tool}".encode()).hexdigest()
        return digest[:16]

    @property
    def is_sparsity(self) -> bool:
        return self.stage == "sparsity"

    def model(self) -> onnx.ModelProto:
        """The model to profile: built, compressed by the config, then by the tool."""
        model = apply_config(self.build(), self.config)
        return apply_tool(self.tool, model) if self.tool else model


def prior_index(priors_dir: Path = DEFAULT_PRIORS_DIR) -> list[dict[str, Any]]:
    """The prior architectures (skeleton files) in priority order."""
    index_path = priors_dir / "index.json"
    if not index_path.exists():
        raise FileNotFoundError(f"no op-space priors at {priors_dir} (expected index.json)")
    entries = json.loads(index_path.read_text())["priors"]
    return sorted(entries, key=lambda e: (e["priority"], e["file"]))


def _input_shapes(entry: dict[str, Any], skeleton: dict[str, Any], batch: int | None,
                  size: int | None) -> dict[str, list[int]] | None:
    """The skeleton's input shapes at another batch size and input size (image side or sequence length)."""
    if batch is None and size is None:
        return None
    shapes = {}
    for value in skeleton["inputs"]:
        dims = list(value["shape"])
        if batch is not None:
            dims[0] = batch
        if size is not None:
            if entry.get("family") == "text":
                dims[1] = size
            else:
                dims[-2:] = [size, size]
        shapes[value["name"]] = dims
    return shapes


def _skeleton_builder(priors_dir: Path, entry: dict[str, Any], batch: int | None = None, size: int | None = None,
                      seed: int = 0) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        skeleton = load_skeleton(priors_dir / entry["file"])
        return materialize_skeleton(skeleton, seed=seed, input_shapes=_input_shapes(entry, skeleton, batch, size))

    return build


def _own(entry: dict[str, Any], batch: int | None, size: int | None) -> tuple[int | None, int | None]:
    """None where a batch or size is the prior's own (the same model, the same label)."""
    return (None if batch in (None, int(entry["batch"])) else batch,
            None if size in (None, int(entry["size"])) else size)


def variant_item(priors_dir: Path, entry: dict[str, Any], size: int | None, config: dict[str, Any], stage: str,
                 name: str, seed: int, batch: int | None = None, tool: str = "") -> WorkItem:
    """A prior at batch `batch` and input size `size` (None: its own) under `config` (and `tool`), labelled
    `<stem>@<batch>x<size>/<name>`."""
    batch, size = _own(entry, batch, size)
    own_batch, own_size = batch or int(entry["batch"]), size or int(entry["size"])
    return WorkItem(label=f"{Path(entry['file']).stem}@{own_batch}x{own_size}/{name}",
                    build=_skeleton_builder(priors_dir, entry, batch, size, seed=seed),
                    config=parse_config(config), stage=stage, architecture=entry["architecture"],
                    prior_file=entry["file"], size=own_size, batch=own_batch, tool=tool)


def sizes_for(entry: dict[str, Any]) -> list[int]:
    """The input sizes (image side or sequence length) random variants and refinement try for a prior."""
    return RANDOM_SEQUENCE_LENGTHS if entry.get("family") == "text" else RANDOM_SIZES


def random_variants(priors_dir: Path = DEFAULT_PRIORS_DIR, seed: int = 0) -> Iterator[WorkItem]:
    """Random variants of the priors without end: batch sizes, input sizes, prune ratios, rounding, bit-widths."""
    entries = prior_index(priors_dir)
    rng = random.Random(seed)
    resizable = resizable_priors(priors_dir)
    counter = 0
    while True:
        counter += 1
        entry = rng.choice(entries)
        size = batch = None
        if entry["file"] in resizable:
            size = rng.choice(sizes_for(entry))
            batch = rng.choice(RANDOM_BATCHES)
        transformer = entry.get("family") in _TRANSFORMERS
        bits = rng.choice([32, 32, 8, 8, 4] if transformer else [32, 32, 8])
        default: dict[str, Any] = {"prune_ratio": round(rng.uniform(0.1, 0.7), 2), "bits": bits}
        tool = ""
        if bits == 8 and transformer and rng.random() < 0.5:
            default["quantization"] = "dynamic"
        elif bits == 8 and rng.random() < 0.3:
            default.pop("bits")
            tool = "quantize_static"
        if rng.random() < 0.3:
            default["round_to"] = rng.choice([4, 8, 16])
        yield variant_item(priors_dir, entry, size, {"default": default}, "random", f"random{counter}", seed=counter,
                           batch=batch, tool=tool)


def default_plan(priors_dir: Path = DEFAULT_PRIORS_DIR, seed: int = 0,
                 then: Iterable[WorkItem] | None = None) -> Iterator[WorkItem]:
    """Real architectures under each config, then sparsity, then `then` (default: random variants without end).

    Every prior in float first; then the resizable CNN priors in float at other batch sizes; then the configs users
    compress with most, for the first priors and then for the others; then the rest of the configs.

    `then` is where adaptive refinement (profiler.refine) goes: it sees each item's measurements before it
    chooses the next.
    """
    entries = prior_index(priors_dir)
    first, rest = entries[:_FIRST_PRIORS], entries[_FIRST_PRIORS:]
    for entry in entries:
        yield variant_item(priors_dir, entry, None, {}, "priors", "fp32", seed=0)
    resizable = resizable_priors(priors_dir)
    for batch, size in _BATCH_VARIANTS:
        for entry in entries:
            if entry["file"] in resizable and entry.get("family", "cnn") == "cnn":
                yield variant_item(priors_dir, entry, size, {}, "priors", "fp32", seed=0, batch=batch)
    passes = [(_MAIN_STAGES, first), (_MAIN_STAGES, rest), (_LATE_STAGES, entries)]
    for stages, group in passes:
        for config_name, raw, tool, families in stages:
            for entry in group:
                if entry.get("family", "cnn") in families:
                    yield variant_item(priors_dir, entry, None, raw, "priors", config_name, seed=0, tool=tool)
    for config_name, raw in SPARSITY_CONFIGS:
        for entry in entries:
            if entry.get("family", "cnn") == "cnn":
                yield variant_item(priors_dir, entry, None, raw, "sparsity", config_name, seed=0)
    yield from then if then is not None else random_variants(priors_dir, seed)


def resizable_priors(priors_dir: Path = DEFAULT_PRIORS_DIR) -> frozenset[str]:
    """Skeleton files of the priors that run at other batch and input sizes.

    benchmarks/make_priors.py tried each at batch 2 and another size in onnxruntime and wrote the answer into the
    index: exports with shapes baked into constants (Hugging Face models through the TorchScript exporter, the
    dynamo exporter's reshapes) do not resize.
    """
    return frozenset(e["file"] for e in prior_index(priors_dir) if e.get("resizable"))


def input_shapes_for(entry: dict[str, Any], skeleton: dict[str, Any], batch: int | None,
                     size: int | None) -> dict[str, list[int]] | None:
    """A prior's input shapes at another batch size and input size (what make_priors tries, what variants use)."""
    return _input_shapes(entry, skeleton, batch, size)


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
