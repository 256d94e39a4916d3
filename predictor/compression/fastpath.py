"""Configs applied at the kernel level: learn a model's transformations once, then any config costs microseconds.

Learning (once per model and runtime) compresses the model for real a few times (fp32, int8, fp16,
int4, and fp32 with every channel group one channel short, which is how the runtime runs layers
whose channel counts leave its blocked layout), extracts the kernels of each, and learns which key
dimensions come from which prunable channel group: it extracts every variant a second time with
each group's channel dimension replaced by a unique sentinel value and reads where the sentinels
land. A config is then answered without a quantizer run or a runtime session: each layer takes its
kernels from the variant of its bit-width (and, for fp32, from the blocked or unblocked form its
pruned channel counts call for), with the pruned channel counts written into the keys.
"""
from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import onnx

from predictor.compression.apply import apply_config
from predictor.compression.config import CompressionConfig, ResolvedCompression, parse_config
from predictor.compression.pruning import ChannelGroups, analyze_channel_groups, kept_channels
from predictor.errors import ConfigError, LatpredError
from predictor.kernels.keys import Kernel, KernelKey, kernels_from_optimized
from predictor.memo import BoundedMemo
from predictor.model.graph import infer_tensor_infos
from predictor.runtime.optimizer import RuntimeSpec, nchwc_block_size, nchwc_channel_alignment, optimize_model

__all__ = ["FastConfigPath", "nchwc_block_size"]

logger = logging.getLogger(__name__)

_SENTINEL_BASE = 1_000_003
# Keeps every channel group one channel short of a multiple of any block size.
_UNALIGNED_RATIO = 1e-6
_WEIGHT_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat"}
_LAYOUT_PROBE_RATIOS = (0.15, 0.3, 0.45, 0.6)
_MEMO_ENTRIES = 50_000  # per model and memo: bounded memory (predictor.memo)

Segments = tuple[tuple[int, int], ...]  # (fp32 channel group, channels in the unpruned model)
DimTags = tuple[Segments | None, ...]

@dataclass(frozen=True)
class _TaggedKernel:
    kernel: Kernel
    inputs: tuple[DimTags | None, ...]
    outputs: tuple[DimTags | None, ...]
    weight: DimTags | None

    @property
    def roots(self) -> tuple[int, ...]:
        """The channel groups this kernel's key depends on."""
        found = {root for tags in (*self.inputs, *self.outputs, self.weight) for tag in tags or ()
                 if tag is not None for root, _ in tag}
        return tuple(sorted(found))


@dataclass
class _Variant:
    """One really compressed form of the model: its kernels grouped by the layer (unit) they serve."""

    kept: dict[int, int] = field(default_factory=dict)
    units: dict[str, list[_TaggedKernel]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    # Whether the layer before each one ran in the runtime's blocked layout.
    previous_blocked: dict[str, bool] = field(default_factory=dict)


def _blocked(form: list[_TaggedKernel]) -> bool:
    return any(t.kernel.op_type.startswith("Nchwc") for t in form if t.kernel.nodes)


def _kept_for(config: CompressionConfig, group_of_node: dict[str, int], group_sizes: dict[int, int]) -> dict[int, int]:
    """Channels each prunable group keeps under a config (decided by the group's first producer)."""
    return _kept_from(config.resolver(), _first_producers(group_of_node), group_sizes)


def _first_producers(group_of_node: dict[str, int]) -> list[tuple[int, str]]:
    """(group, the node whose config decides it), in the order groups are first produced."""
    first: dict[int, str] = {}
    for node_name, root in group_of_node.items():
        first.setdefault(root, node_name)
    return list(first.items())


def _kept_from(resolve: Callable[[str], ResolvedCompression], producers: list[tuple[int, str]],
               group_sizes: dict[int, int]) -> dict[int, int]:
    kept: dict[int, int] = {}
    for root, node_name in producers:
        resolved = resolve(node_name)
        kept[root] = _kept_channels(group_sizes[root], resolved.prune_ratio, resolved.round_to)
    return kept


@lru_cache(maxsize=65536)
def _kept_channels(channels: int, ratio: float, round_to: int) -> int:
    return kept_channels(channels, ratio, round_to)


class FastConfigPath:
    """A model's learned transformations; `kernels(config)` needs no quantizer and no runtime session."""

    def __init__(self, runtime: RuntimeSpec, group_sizes: dict[int, int], group_of_node: dict[str, int],
                 variants: dict[str, _Variant], block: int, layouts: list[_Variant],
                 refused: dict[str, str] | None = None, alignment: int = 0) -> None:
        self.runtime = runtime
        self.refused = refused or {}
        self.group_sizes = group_sizes
        self.group_of_node = group_of_node
        self.variants = variants
        self.block = block
        # The multiple of channels the blocked layout takes for a conv (padding them to the block): which layers
        # run blocked hangs on it and on the block, so probes are alike where their channel counts are multiples
        # of both alike.
        self.alignment = alignment or block
        self.layouts = layouts
        self._unit_tags: dict[str, list[Segments]] = {}
        # Everything below is derived once and reused by every config: a fresh config costs a few dict
        # lookups and tuple builds per layer. Memo keys and values hold only ints, floats, strings and
        # keys, so a long-lived memo adds little for the garbage collector to traverse.
        # The really compressed form of each precision: "8" static int8, "8d" dynamic int8, "16", "4".
        self._by_label = {label: variant for label, variant in variants.items() if label != "32u"}
        self._producers = _first_producers(group_of_node)
        self._unit_probes: dict[str, list[tuple[int, tuple[int, ...], tuple[bool, ...], bool]]] = {}
        self._unit_roots: dict[str, tuple[int, ...]] = {}
        self._unit_dims: dict[str, tuple[tuple[int, tuple[tuple[int, int], ...]], ...]] = {}
        self._form_plans: dict[int, tuple[tuple[_RewritePlan, ...], bool]] = {}
        self._layout_memo: BoundedMemo[tuple[Any, ...], int] = BoundedMemo(_MEMO_ENTRIES)
        self._memo: BoundedMemo[tuple[Any, ...], KernelKey] = BoundedMemo(_MEMO_ENTRIES)
        self._plan_ids = itertools.count()  # unique even when threads build plans at once

    @classmethod
    def learn(cls, model: onnx.ModelProto, runtime: RuntimeSpec) -> FastConfigPath:
        """Compress and extract the model's variants once (the expensive part: seconds for a ResNet-50)."""
        base_groups = analyze_channel_groups(model)
        prunable = base_groups.prunable_spaces()
        group_of_node = {name: root for root, producers in prunable.items() for name in producers}
        group_sizes = {root: _group_size(base_groups, root) for root in prunable}
        base_names = {node.name for node in model.graph.node}
        has_matmul = any(n.op_type in {"MatMul", "Gemm"} for n in model.graph.node)
        configs: dict[str, dict[str, Any]] = {
            "32": {},
            "32u": {"default": {"prune_ratio": _UNALIGNED_RATIO}},
            "8": {"default": {"bits": 8}},
            "8d": {"default": {"bits": 8, "quantization": "dynamic"}},
            "16": {"default": {"bits": 16}},
        }
        if has_matmul:
            configs["4"] = {"default": {"bits": 4}}
        variants: dict[str, _Variant] = {}
        # The precisions this model cannot be compressed to (a file quantized already), with why: a config that
        # asks for one fails as compressing it for real does, and the others are still answered.
        refused: dict[str, str] = {}
        units: set[str] = set()
        for label, raw in configs.items():
            config = parse_config(raw)
            try:
                compressed = apply_config(model, config)
                variants[label] = _learn_variant(compressed, runtime, group_of_node, units or base_names,
                                                 _kept_for(config, group_of_node, group_sizes))
            except LatpredError as exc:
                if label in ("32", "32u"):
                    raise
                logger.info("the model cannot be compressed by %s: %s", json.dumps(raw), exc)
                refused[label] = f"this model cannot be compressed with {json.dumps(raw['default'])}: {exc}"
                continue
            units = units or set(variants[label].order)
        block = nchwc_block_size(runtime)
        layouts = [variants["32"], variants["32u"]]
        if block:
            # The runtime picks a layer's layout from the channel counts around it in ways no local rule
            # captures; a few pruned probes show it the layouts that mixed alignments lead to.
            for ratio in _LAYOUT_PROBE_RATIOS:
                config = parse_config({"default": {"prune_ratio": ratio}})
                layouts.append(_learn_variant(apply_config(model, config), runtime, group_of_node, units,
                                              _kept_for(config, group_of_node, group_sizes)))
        return cls(runtime, group_sizes, group_of_node, variants, block, layouts, refused,
                   nchwc_channel_alignment(runtime))

    def kernels(self, config: CompressionConfig) -> list[Kernel]:
        """The kernels the runtime would execute for the model compressed by `config`."""
        plans: list[_RewritePlan] = []
        keys = self._walk(config, plans)
        return [plan.kernel_with(key) for plan, key in zip(plans, keys, strict=True)]

    def keys(self, config: CompressionConfig) -> list[KernelKey]:
        """The keys of `kernels(config)`, in order: all that estimating a latency needs (no Kernel objects)."""
        return self._walk(config, None)

    def _walk(self, config: CompressionConfig, plans_out: list[_RewritePlan] | None) -> list[KernelKey]:
        resolve = config.resolver()
        kept = _kept_from(resolve, self._producers, self.group_sizes)
        keys: list[KernelKey] = []
        memo = self._memo
        previous_blocked, previous_layout = False, 0
        for unit in self.variants["32"].order:
            resolved = resolve(unit)
            label = "8d" if resolved.dynamic_int8 else str(resolved.bits)
            if label in self.refused:
                raise ConfigError(self.refused[label])
            form, previous_layout = self._form_for(unit, label, kept, previous_blocked, previous_layout)
            plans, previous_blocked = self._plans_of(form)
            if plans_out is not None:
                plans_out.extend(plans)
            sparsity, pattern = resolved.sparsity, resolved.sparsity_pattern
            for plan in plans:
                key = plan.fixed
                if key is None:
                    # A kernel's key depends only on the kept channels of the groups it names and, if it has
                    # weights, on the sparsity asked for: the same situation in any config gives the same key.
                    memo_key = (plan.index, tuple([kept.get(root, -1) for root in plan.roots]),
                                *((sparsity, pattern) if plan.sparse else ()))
                    key = memo.get(memo_key)
                    if key is None:
                        key = plan.rewrite(kept, sparsity, pattern)
                        memo.put(memo_key, key)
                keys.append(key)
        return keys

    def _plans_of(self, form: list[_TaggedKernel]) -> tuple[tuple[_RewritePlan, ...], bool]:
        """The rewrite plans of a layer's kernels, and whether the layer runs in the blocked layout."""
        found = self._form_plans.get(id(form))
        if found is None:
            plans = tuple(_RewritePlan(tagged, index=next(self._plan_ids), block=self.block) for tagged in form)
            found = self._form_plans.setdefault(id(form), (plans, _blocked(form)))
        return found

    def _form_for(self, unit: str, label: str, kept: dict[int, int], previous_blocked: bool,
                  previous_layout: int) -> tuple[list[_TaggedKernel], int]:
        variant = self._by_label.get(label)
        if label != "32" and variant is not None and unit in variant.units:
            return variant.units[unit], previous_layout
        if not self.block:
            return self.variants["32"].units[unit], 0
        # The choice hangs only on the kept channels of the groups the layer's signature names.
        roots = self._unit_roots.get(unit)
        if roots is None:
            roots = self._unit_roots.setdefault(unit, tuple(sorted(
                {root for tag in self._tags_of(unit) for root, _ in tag if root >= 0})))
        memo_key = (unit, tuple([kept.get(root, -1) for root in roots]), previous_blocked, previous_layout)
        chosen = self._layout_memo.get(memo_key)
        if chosen is None:
            chosen = self._choose_layout(unit, kept, previous_blocked, previous_layout)
            self._layout_memo.put(memo_key, chosen)
        return self.layouts[chosen].units[unit], chosen

    def _choose_layout(self, unit: str, kept: dict[int, int], previous_blocked: bool, previous_layout: int) -> int:
        # The runtime's layout choice for a layer hangs on its channel counts and on the layout its input
        # arrives in; the probe whose situation was most alike for this layer shows the choice (ties go
        # to the probe the previous layer followed, whose neighbourhood is most like this one's).
        wanted = self._signature(unit, kept)
        wanted_aligned = self._alignments(wanted)
        probes = self._probes_of(unit)
        flags = [2 * sum(a != b for a, b in zip(wanted_aligned, have_aligned, strict=True))
                 + (probe_previous_blocked != previous_blocked)
                 for _, _, have_aligned, probe_previous_blocked in probes]
        fewest = min(flags)
        # Among equally alike probes (only those can win), the one with the nearest channel counts.
        ranked = [(fewest, sum(abs(a - b) / max(a, b, 1) for a, b in zip(wanted, have, strict=True)),
                   index != previous_layout, index)
                  for (index, have, _, _), flag in zip(probes, flags, strict=True) if flag == fewest]
        return int(min(ranked)[-1])

    def _alignments(self, channels: tuple[int, ...]) -> tuple[int, ...]:
        """Per channel count, 3 for fewer than a block (a conv reads such an input in NCHW), 2 for a multiple of the
        block, 1 for a multiple of the alignment only (onnxruntime blocks convs with such counts, padding them, but
        not pools), 0 for neither."""
        block, alignment = self.block, self.alignment
        return tuple([3 if c < block else 2 if c % block == 0 else 1 if c % alignment == 0 else 0 for c in channels])

    def _probes_of(self, unit: str) -> list[tuple[int, tuple[int, ...], tuple[int, ...], bool]]:
        """Per probe that has the layer: its index, the layer's channel counts there, their alignments, and
        whether the layer before it ran blocked."""
        probes = self._unit_probes.get(unit)
        if probes is None:
            probes = []
            for index, layout in enumerate(self.layouts):
                if unit not in layout.units:
                    continue
                have = self._signature(unit, layout.kept)
                probes.append((index, have, self._alignments(have),
                               layout.previous_blocked.get(unit, False)))
            self._unit_probes[unit] = probes
        return probes

    def _signature(self, unit: str, kept: dict[int, int]) -> tuple[int, ...]:
        """The channel counts a layer sees under `kept`."""
        dims = self._unit_dims.get(unit)
        if dims is None:
            dims = self._unit_dims.setdefault(unit, tuple(_dim_plan(tag) for tag in self._tags_of(unit)))
        return tuple([_dim_under(fixed, parts, kept) for fixed, parts in dims])

    def _tags_of(self, unit: str) -> list[Segments]:
        tags = self._unit_tags.get(unit)
        if tags is None:
            tags = [tag for tagged in self.variants["32"].units[unit] for shape in (*tagged.inputs, *tagged.outputs)
                    for tag in shape or () if tag is not None]
            self._unit_tags[unit] = tags
        return tags


def _group_size(groups: ChannelGroups, root: int) -> int:
    for segments in groups.segments.values():
        for space, size in segments:
            if groups.space(space) == root:
                return size
    raise KeyError(root)


def _learn_variant(model: onnx.ModelProto, runtime: RuntimeSpec, group_of_node: dict[str, int],
                   unit_names: set[str], kept: dict[int, int]) -> _Variant:
    optimized = optimize_model(model, runtime)
    block = nchwc_block_size(runtime)  # blocked channels are padded to the device's block, as extraction pads them
    real = kernels_from_optimized(model, optimized, nchwc_block=block)
    overrides, registry = _sentinel_shapes(model, group_of_node)
    probed = kernels_from_optimized(model, optimized, shape_overrides=overrides, nchwc_block=block)
    if len(real) != len(probed):
        raise RuntimeError("sentinel extraction changed the kernel list")
    tagged = [
        _TaggedKernel(
            kernel=kernel,
            inputs=tuple(_tags(_aligned_probe(r, p), registry) for r, p in zip(kernel.key.inputs, probe.key.inputs,
                                                                              strict=True)),
            outputs=tuple(_tags(_aligned_probe(r, p), registry) for r, p in zip(kernel.key.outputs, probe.key.outputs,
                                                                                strict=True)),
            weight=_tags(probe.key.weight, registry),
        )
        for kernel, probe in zip(real, probed, strict=True)
    ]
    variant = _Variant(kept=kept)
    pending: list[_TaggedKernel] = []
    for item in tagged:
        unit = item.kernel.name if item.kernel.nodes and item.kernel.name in unit_names else None
        if unit is None:
            pending.append(item)  # inserted by the runtime or the quantizer: goes with the next layer
            continue
        if unit not in variant.units:
            variant.units[unit] = []
            variant.order.append(unit)
        variant.units[unit].extend(pending + [item])
        pending = []
    if pending and variant.order:
        variant.units[variant.order[-1]].extend(pending)
    for previous, unit in zip(variant.order, variant.order[1:], strict=False):
        variant.previous_blocked[unit] = _blocked(variant.units[previous])
    return variant


def _sentinel_shapes(model: onnx.ModelProto, group_of_node: dict[str, int]
                     ) -> tuple[dict[str, tuple[int, ...]], dict[int, Segments]]:
    """Shapes with each prunable channel dimension replaced by a sentinel naming its groups."""
    groups = analyze_channel_groups(model)
    infos = infer_tensor_infos(model)
    root_map: dict[int, int] = {}
    for space, producers in groups.sources.items():
        for name in producers:
            if name in group_of_node:
                root_map[groups.space(space)] = group_of_node[name]
    registry: dict[int, Segments] = {}
    ids: dict[Segments, int] = {}
    overrides: dict[str, tuple[int, ...]] = {}

    def sentinel(segments: Segments) -> int:
        if segments not in ids:
            ids[segments] = len(ids)
            registry[ids[segments]] = segments
        return _SENTINEL_BASE + ids[segments]

    channel_sentinel: dict[str, int] = {}
    for tensor, segs in groups.segments.items():
        info = infos.get(tensor)
        axis = groups.channel_axis.get(tensor)
        if info is None or info.shape is None or axis is None or axis >= len(info.shape):
            continue
        mapped = tuple((root_map.get(groups.space(space), -1), size) for space, size in segs)
        if all(root == -1 for root, _ in mapped):
            continue
        value = sentinel(mapped)
        channel_sentinel[tensor] = value
        dims = list(info.shape)
        dims[axis] = value
        overrides[tensor] = tuple(dims)
    producer = {o: node for node in model.graph.node for o in node.output if o}
    for node in model.graph.node:
        if node.op_type not in _WEIGHT_OPS or len(node.input) < 2:
            continue
        weight_names = [node.input[1]]
        source = producer.get(node.input[1])
        if source is not None and source.op_type == "DequantizeLinear":
            weight_names.append(source.input[0])
        weight_info = infos.get(node.input[1])
        shape = weight_info.shape if weight_info is not None else None
        if shape is None:
            continue
        out_value = channel_sentinel.get(node.output[0])
        in_value = channel_sentinel.get(node.input[0])
        tagged = list(shape)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in ("Conv", "ConvInteger"):
            if out_value is not None:
                tagged[0] = out_value
            if in_value is not None and int(attrs.get("group", 1)) == 1:  # type: ignore[call-overload]
                tagged[1] = in_value
        elif node.op_type != "ConvTranspose" and len(shape) == 2:
            out_axis, in_axis = (0, 1) if node.op_type == "Gemm" and attrs.get("transB") else (1, 0)
            if out_value is not None:
                tagged[out_axis] = out_value
            if in_value is not None:
                tagged[in_axis] = in_value
        for name in weight_names:
            overrides[name] = tuple(tagged)
    return overrides, registry


def _aligned_probe(real: tuple[int, ...] | None, probe: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The probe shape in the real shape's dimension order (int8 convs relabel NHWC shapes by channel count)."""
    if real is None or probe is None or len(real) != 4 or len(probe) != 4:
        return probe

    def agrees(candidate: tuple[int, ...]) -> bool:
        return all(c >= _SENTINEL_BASE or c == r for c, r in zip(candidate, real, strict=True))

    if agrees(probe):
        return probe
    for order in ((0, 3, 1, 2), (0, 2, 3, 1)):
        permuted = tuple(probe[i] for i in order)
        if agrees(permuted):
            return permuted
    return probe


def _tags(shape: tuple[int, ...] | None, registry: dict[int, Segments]) -> DimTags | None:
    if shape is None:
        return None
    tags = tuple(registry.get(d - _SENTINEL_BASE) if d >= _SENTINEL_BASE else None for d in shape)
    return tags if any(t is not None for t in tags) else None


def _round_up(value: int, block: int) -> int:
    return -(-value // block) * block


def _two_four_share(weight: tuple[int, ...], key: Any) -> tuple[float, str]:
    """What magnitude 2:4 pruning leaves, as predictor.compression.apply applies it: zeros only in whole groups of 4."""
    if len(weight) == 2:
        columns = weight[1] if key.op_type == "Gemm" and key.attr("transB") else weight[0]
    else:
        columns = weight[1]
    usable = columns - columns % 4
    if usable == 0:
        return 0.0, "dense"
    share = round(round(0.5 * usable / columns / 0.05) * 0.05, 2)
    return share, "2:4" if usable == columns else "unstructured"


def _dim_plan(tag: Segments) -> tuple[int, tuple[tuple[int, int], ...]]:
    """A tagged dimension as (channels of its unprunable segments, its (group, channels) segments)."""
    return sum(size for root, size in tag if root < 0), tuple((root, size) for root, size in tag if root >= 0)


def _dim_under(fixed: int, parts: tuple[tuple[int, int], ...], kept: dict[int, int]) -> int:
    """A tagged dimension under `kept`: the sum of its segments' channels, kept ones where pruned."""
    for root, size in parts:
        fixed += kept.get(root, size)
    return fixed


# (dimension index, channels of unprunable segments, (group, channels) of prunable segments, the block the runtime
# pads the dimension to or 0)
_DimPlan = tuple[int, int, tuple[tuple[int, int], ...], int]


def _shape_plan(shape: tuple[int, ...] | None, tags: DimTags | None, padded: frozenset[int] = frozenset(),
                block: int = 0) -> tuple[_DimPlan, ...] | None:
    """The dimensions of a shape that follow kept channels (None: the shape never changes).

    `padded`: the dimensions the runtime pads to its NCHWc `block` (Kernel.padded).
    """
    if shape is None or tags is None or len(tags) != len(shape):
        return None
    plan = tuple((index, *_dim_plan(tag), block if index in padded else 0)
                 for index, tag in enumerate(tags) if tag is not None)
    return plan or None


def _apply_plan(shape: tuple[int, ...] | None, plan: tuple[_DimPlan, ...] | None,
                kept: dict[int, int], pad: bool = True) -> tuple[int, ...] | None:
    """The shape under `kept`: each tagged dimension is the sum of its segments' (kept) channels, padded to the
    runtime's block where the runtime pads it (`pad` False: as the model has it)."""
    if plan is None or shape is None:
        return shape
    dims = list(shape)
    for index, fixed, parts, block in plan:
        for root, size in parts:
            fixed += kept.get(root, size)
        dims[index] = -(-fixed // block) * block if block and pad else fixed
    return tuple(dims)


def _padded_positions(kernel: Kernel, field_name: str, position: int | None = None) -> frozenset[int]:
    """The dimensions of one of a kernel's shapes that the runtime pads (from Kernel.padded)."""
    prefix = f"{field_name}." if position is None else f"{field_name}.{position}."
    return frozenset(int(entry[len(prefix):]) for entry in kernel.padded if entry.startswith(prefix)
                     and entry[len(prefix):].isdigit())


_KEY_FIELDS = [f.name for f in fields(KernelKey)]
_INPUTS, _OUTPUTS, _WEIGHT, _ATTRS, _SPARSITY, _PATTERN = (
    _KEY_FIELDS.index(name) for name in ("inputs", "outputs", "weight", "attrs", "sparsity", "sparsity_pattern"))


@lru_cache(maxsize=1024)
def _rounded_sparsity(sparsity: float) -> float:
    return round(round(sparsity / 0.05) * 0.05, 2)


class _RewritePlan:
    """One learned kernel rewritten for kept channels and sparsity; what does not depend on them is read once.

    A layer's new key: shapes with the pruned channel counts written in, a layout reorder's `channels`
    and a depthwise conv's `group` following its kept channels, and the sparsity the config asks for (2:4
    as predictor.compression.apply applies it: zeros only in whole groups of 4).
    """

    __slots__ = ("channels_attr", "fixed", "group_block", "index", "inputs", "kernel_fields", "key", "key_fields",
                 "outputs", "roots", "sparse", "weight")

    def __init__(self, tagged: _TaggedKernel, index: int, block: int = 0) -> None:
        kernel = tagged.kernel
        key = kernel.key
        self.index = index
        self.key = key
        self.roots = tuple(root for root in tagged.roots if root >= 0)  # the groups whose kept channels count
        self.inputs = tuple(_shape_plan(s, t, _padded_positions(kernel, "inputs", i), block)
                            for i, (s, t) in enumerate(zip(key.inputs, tagged.inputs, strict=True)))
        self.outputs = tuple(_shape_plan(s, t, _padded_positions(kernel, "outputs", i), block)
                             for i, (s, t) in enumerate(zip(key.outputs, tagged.outputs, strict=True)))
        self.weight = _shape_plan(key.weight, tagged.weight, _padded_positions(kernel, "weight"), block)
        attrs = dict(key.attrs)
        # Layout reorders name the channel count they copy: the output's axis 1, or its last axis where the reorder
        # writes channels last (0: no such attribute).
        self.channels_attr = 0
        if "channels" in attrs and key.outputs and key.outputs[0] is not None and len(key.outputs[0]) == 4:
            self.channels_attr = 3 if attrs.get("channels_last") else 1
        # Depthwise: one group per kept channel (as the weight has them: padded where the runtime pads them).
        self.group_block: int | None = None
        if key.weight is not None and len(key.weight) == 4 and key.weight[1] == 1 \
                and attrs.get("group", 1) not in (1, None) and attrs.get("group") == key.weight[0]:
            self.group_block = 0
        self.sparse = key.weight is not None and key.op_type != "MatMulNBits"
        # Every field in declaration order: what is not rewritten is carried over as it is.
        self.key_fields = [getattr(key, name) for name in _KEY_FIELDS]
        self.kernel_fields = {f.name: getattr(tagged.kernel, f.name) for f in fields(tagged.kernel)}
        # A kernel that names no channel group and has no weights to sparsify keeps its key in every config.
        self.fixed: KernelKey | None = None if self.roots or self.sparse else self.rewrite({}, 0.0, "unstructured")

    def kernel_with(self, key: KernelKey) -> Kernel:
        """The learned kernel (name, nodes) with a rewritten key."""
        return Kernel(**{**self.kernel_fields, "key": key})

    def rewrite(self, kept: dict[int, int], sparsity: float, pattern: str) -> KernelKey:
        key = self.key
        weight = _apply_plan(key.weight, self.weight, kept)
        outputs = tuple([_apply_plan(s, p, kept) for s, p in zip(key.outputs, self.outputs, strict=True)])
        attrs = key.attrs
        if self.channels_attr or self.group_block is not None:
            changed = dict(key.attrs)
            if self.channels_attr:
                changed["channels"] = outputs[0][self.channels_attr]  # type: ignore[index]
            if self.group_block is not None and weight is not None:
                changed["group"] = weight[0] if self.group_block == 0 else _round_up(weight[0], self.group_block)
            if changed != dict(key.attrs):
                attrs = tuple(sorted(changed.items()))
        new_sparsity, new_pattern = key.sparsity, key.sparsity_pattern
        if self.sparse and weight is not None:
            if pattern == "2:4":
                # The model's weight (unpadded) is what 2:4 pruning zeroes.
                new_sparsity, new_pattern = _two_four_share(_apply_plan(key.weight, self.weight, kept, pad=False)
                                                            or weight, key)
            elif sparsity > 0:
                new_sparsity, new_pattern = _rounded_sparsity(sparsity), "unstructured"
        # Values are already canonical (ints, tuples), so the key is built directly, not through JSON.
        values = self.key_fields.copy()
        values[_INPUTS] = tuple([_apply_plan(s, p, kept) for s, p in zip(key.inputs, self.inputs, strict=True)])
        values[_OUTPUTS] = outputs
        values[_WEIGHT] = weight
        values[_ATTRS] = attrs
        values[_SPARSITY] = new_sparsity
        values[_PATTERN] = new_pattern if new_sparsity else "dense"
        return KernelKey(*values)
