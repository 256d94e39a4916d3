"""Ranking fresh configs fast changes no figure: the memoized, batched path against a per-candidate reference.

The reference is the fast path and the estimate as first written: every config resolved from its pydantic
fields, every layer's layout chosen and every kernel rewritten anew, every kernel looked up by its JSON
hash, predicted one at a time by its regressor or fallback, nothing shared between candidates.
"""
from __future__ import annotations

import fnmatch
import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from predictor.compression.config import CompressionConfig, ResolvedCompression, parse_config
from predictor.compression.fastpath import FastConfigPath, _two_four_share
from predictor.compression.pruning import kept_channels
from predictor.estimation.estimate import DevicePredictor, fit_bandwidth_fallback
from predictor.estimation.prepared import PreparedModel, rank_candidates
from predictor.estimation.regressors import RegressorSet, train_op_regressor
from predictor.estimation.table import MeasuredTable
from predictor.kernels.features import FEATURE_NAMES, kernel_features
from predictor.kernels.keys import Kernel, KernelKey
from predictor.runtime.optimizer import local_runtime
from tests import factories

RUNTIME = local_runtime(1)
OVERHEAD = {"per_run_ms": 0.05, "per_kernel_ms": 0.002, "kernel_scale": 1.1}


def small_net():  # type: ignore[no-untyped-def]
    """Stem, an inverted residual block (depthwise), a strided bottleneck with a projection, a classifier."""
    g = factories.GraphBuilder(seed=3)
    y = g.node("Relu", [g.conv("input", "stem", 3, 24)], "stem_relu")
    e = g.node("Relu", [g.conv(y, "block0.expand", 24, 72, k=1)], "block0.expand_relu")
    d = g.node("Relu", [g.conv(e, "block0.dw", 72, 72, k=3, group=72)], "block0.dw_relu")
    y = g.node("Add", [g.conv(d, "block0.project", 72, 24, k=1), y], "block0.add")
    a = g.node("Relu", [g.conv(y, "block1.reduce", 24, 40, k=1)], "block1.reduce_relu")
    b = g.node("Relu", [g.conv(a, "block1.conv", 40, 40, k=3, stride=2)], "block1.conv_relu")
    c = g.conv(b, "block1.expand", 40, 48, k=1)
    y = g.node("Relu", [g.node("Add", [c, g.conv(y, "block1.shortcut", 24, 48, k=1, stride=2)], "block1.add")],
               "block1.relu")
    y = g.node("Flatten", [g.node("GlobalAveragePool", [y], "gap")], "flatten")
    y = g.node("Gemm", [y, g.weight("fc.weight", (10, 48)), g.weight("fc.bias", (10,))], "fc", transB=1)
    return g.model({"input": [1, 3, 32, 32]}, y)


CONV_NAMES = ["stem", "block0.expand", "block0.dw", "block0.project", "block1.reduce", "block1.conv",
              "block1.expand", "block1.shortcut"]


def random_configs(count: int, seed: int) -> list[dict[str, Any]]:
    """What compression tools send: fresh ratios, bit-widths, sparsities, 2:4, rounding, layer overrides."""
    rng = random.Random(seed)
    configs = []
    for _ in range(count):
        default: dict[str, Any] = {"prune_ratio": round(rng.uniform(0.0, 0.7), 3), "bits": rng.choice([32, 32, 8, 16])}
        if default["bits"] == 8 and rng.random() < 0.4:
            default["quantization"] = "dynamic"
        if rng.random() < 0.3:
            default["sparsity"] = round(rng.uniform(0.3, 0.95), 2)
        elif rng.random() < 0.15:
            default["sparsity_pattern"] = "2:4"
        if rng.random() < 0.2:
            default["round_to"] = rng.choice([4, 8])
        config: dict[str, Any] = {"default": default}
        if rng.random() < 0.5:
            layer = rng.choice([*CONV_NAMES, "block1.*", "block0.*"])
            config["layers"] = {layer: {"bits": rng.choice([32, 8]), "prune_ratio": round(rng.uniform(0, 0.5), 2)}}
        configs.append(config)
    return configs


@pytest.fixture(scope="module")
def prepared() -> PreparedModel:
    model = PreparedModel.create(small_net(), RUNTIME)
    model.fast_path()
    return model


@pytest.fixture(scope="module")
def predictor(prepared: PreparedModel) -> DevicePredictor:
    """A table of half the baseline and some pruned kernels, a regressor for the most common conv kernel,
    the bandwidth fallback for the rest, an overhead, and sparsity proven flat for one op type."""
    fast = prepared.fast_path()
    seen = [k.key for raw in random_configs(30, seed=1) for k in reference_kernels(fast, parse_config(raw))]
    measured = {key: law(key) for key in [k.key for k in prepared.kernels()][::2] + seen[::7]}
    conv_ops = Counter(k.op_type for k in seen if k.weight is not None and k.op_type.endswith("Conv"))
    conv_op = conv_ops.most_common(1)[0][0]
    conv_keys = list(dict.fromkeys(k for k in seen if k.op_type == conv_op))
    regressor, _ = train_op_regressor(conv_keys, [law(k) for k in conv_keys])
    flat_op = next(k.op_type for k in seen if k.weight is not None and k.op_type != conv_op)
    device = DevicePredictor(device="test-cpu", table=MeasuredTable.from_keys(measured),
                             regressors=RegressorSet({conv_op: regressor}), overhead=OVERHEAD,
                             flat_axes={flat_op: ["sparsity"]}, fallback=fit_bandwidth_fallback(list(measured.items())))
    return device


def law(key: KernelKey) -> float:
    features = dict(zip(FEATURE_NAMES, kernel_features(key), strict=True))
    return 0.002 + features["effective_macs"] / 4e8 + features["bytes_moved"] / 2e9


def reference_resolve(config: CompressionConfig, node_name: str) -> ResolvedCompression:
    merged: dict[str, Any] = {}
    for part in [config.default, *(spec for pattern, spec in config.layers.items()
                                   if fnmatch.fnmatchcase(node_name, pattern))]:
        merged.update({k: v for k, v in part.model_dump().items() if v is not None})
    return ResolvedCompression(**merged)


def new_dim(value: int, tag: Any, kept: dict[int, int]) -> int:
    return value if tag is None else sum(kept.get(root, size) if root >= 0 else size for root, size in tag)


def new_shape(shape: Any, tags: Any, kept: dict[int, int], padded: set[int] | None = None, block: int = 0) -> Any:
    """The shape with kept channels written in; `padded` dimensions rounded up to the runtime's block."""
    if shape is None or tags is None or len(tags) != len(shape):
        return shape
    dims = [new_dim(value, tag, kept) for value, tag in zip(shape, tags, strict=True)]
    return tuple(-(-d // block) * block if padded and i in padded and tag is not None else d
                 for i, (d, tag) in enumerate(zip(dims, tags, strict=True)))


def padded_of(kernel: Kernel, prefix: str) -> set[int]:
    return {int(entry[len(prefix):]) for entry in kernel.padded if entry.startswith(prefix)}


def signature(fast: FastConfigPath, unit: str, kept: dict[int, int]) -> tuple[int, ...]:
    tags = [tag for tagged in fast.variants["32"].units[unit] for shape in (*tagged.inputs, *tagged.outputs)
            for tag in shape or () if tag is not None]
    return tuple(new_dim(0, tag, kept) for tag in tags)


def alignment_class(fast: FastConfigPath, channels: int) -> str:
    if channels < fast.block:
        return "below the block"
    if channels % fast.block == 0:
        return "whole blocks"
    return "padded" if channels % fast.alignment == 0 else "unaligned"


def reference_form(fast: FastConfigPath, unit: str, label: str, kept: dict[int, int], previous_blocked: bool,
                   previous_layout: int) -> tuple[list[Any], int]:
    variant = fast.variants.get(label)
    if label != "32" and variant is not None and unit in variant.units:
        return variant.units[unit], previous_layout
    if not fast.block:
        return fast.variants["32"].units[unit], 0
    wanted = signature(fast, unit, kept)
    ranked = []
    for index, layout in enumerate(fast.layouts):
        if unit not in layout.units:
            continue
        have = signature(fast, unit, layout.kept)
        flags = 2 * sum(alignment_class(fast, a) != alignment_class(fast, b) for a, b in zip(wanted, have, strict=True))
        flags += layout.previous_blocked.get(unit, False) != previous_blocked
        nearest = sum(abs(a - b) / max(a, b, 1) for a, b in zip(wanted, have, strict=True))
        ranked.append((flags, nearest, index != previous_layout, index))
    chosen = min(ranked)[-1]
    return fast.layouts[chosen].units[unit], chosen


def reference_rewrite(tagged: Any, kept: dict[int, int], sparsity: float, pattern: str, block: int) -> Kernel:
    kernel = tagged.kernel
    key = kernel.key
    weight = new_shape(key.weight, tagged.weight, kept, padded_of(kernel, "weight."), block)
    attrs = dict(key.attrs)
    outputs = tuple(new_shape(s, t, kept, padded_of(kernel, f"outputs.{i}."), block)
                    for i, (s, t) in enumerate(zip(key.outputs, tagged.outputs, strict=True)))
    if "channels" in attrs and outputs and outputs[0] is not None and len(outputs[0]) == 4:
        attrs["channels"] = outputs[0][3 if attrs.get("channels_last") else 1]
    if key.weight is not None and weight is not None and len(weight) == 4 and key.weight[1] == 1 \
            and attrs.get("group", 1) not in (1, None) and attrs.get("group") == key.weight[0]:
        attrs["group"] = weight[0]
    new_sparsity, new_pattern = key.sparsity, key.sparsity_pattern
    if weight is not None and key.op_type != "MatMulNBits":
        if pattern == "2:4":
            new_sparsity, new_pattern = _two_four_share(new_shape(key.weight, tagged.weight, kept), key)
        elif sparsity > 0:
            new_sparsity, new_pattern = round(round(sparsity / 0.05) * 0.05, 2), "unstructured"
    inputs = tuple(new_shape(s, t, kept, padded_of(kernel, f"inputs.{i}."), block)
                   for i, (s, t) in enumerate(zip(key.inputs, tagged.inputs, strict=True)))
    new_key = replace(key, inputs=inputs,
                      outputs=outputs, weight=weight,
                      attrs=tuple(sorted(attrs.items())) if attrs != dict(key.attrs) else key.attrs,
                      sparsity=new_sparsity, sparsity_pattern=new_pattern if new_sparsity else "dense")
    return replace(tagged.kernel, key=new_key)


def reference_kernels(fast: FastConfigPath, config: CompressionConfig) -> list[Kernel]:
    kept: dict[int, int] = {}
    for node_name, root in fast.group_of_node.items():
        if root not in kept:
            resolved = reference_resolve(config, node_name)
            kept[root] = kept_channels(fast.group_sizes[root], resolved.prune_ratio, resolved.round_to)
    kernels: list[Kernel] = []
    previous_blocked, previous_layout = False, 0
    for unit in fast.variants["32"].order:
        resolved = reference_resolve(config, unit)
        label = "8d" if resolved.bits == 8 and resolved.quantization == "dynamic" else str(resolved.bits)
        form, previous_layout = reference_form(fast, unit, label, kept, previous_blocked, previous_layout)
        previous_blocked = any(t.kernel.op_type.startswith("Nchwc") for t in form if t.kernel.nodes)
        kernels.extend(reference_rewrite(t, kept, resolved.sparsity, resolved.sparsity_pattern, fast.block)
                       for t in form)
    return kernels


def reference_estimate(device: DevicePredictor, keys: list[KernelKey]) -> dict[str, Any]:
    """Latency, interval, hit rate and sources of one kernel list, one kernel at a time."""
    latencies, lows, highs, sources = [], [], [], []
    for key in keys:
        lookup = key
        if key.sparsity and "sparsity" in device.flat_axes.get(key.op_type, ()):
            lookup = replace(key, sparsity=0.0, sparsity_pattern="dense")
        measured = device.table.get(lookup.key_hash)
        if measured is not None:
            latency, low, high, source = measured, measured * 0.95, measured * 1.05, "table"
        elif device.regressors.has(key.op_type):
            median, lo, hi = device.regressors.predict([key])
            latency, low, high, source = float(median[0]), float(lo[0]), float(hi[0]), "regressor"
        else:
            features = dict(zip(FEATURE_NAMES, kernel_features(key), strict=True))
            intercept, per_byte, per_mac = device.fallback  # type: ignore[misc]
            latency = max(1e-4, intercept + per_byte * features["bytes_moved"] + per_mac * features["macs"])
            low, high, source = latency * 0.5, latency * 1.5, "fallback"
        latency = max(latency, 1e-6)
        latencies.append(latency)
        lows.append(min(low, latency))
        highs.append(max(high, latency))
        sources.append(source)
    overhead = OVERHEAD["per_run_ms"] + OVERHEAD["per_kernel_ms"] * len(keys)
    scale = OVERHEAD["kernel_scale"]
    return {"latency_ms": scale * sum(latencies) + overhead,
            "interval_ms": [scale * sum(lows) + overhead, scale * sum(highs) + overhead],
            "table_hit_rate": sources.count("table") / len(keys), "sources": dict(Counter(sources))}


def test_ranking_fresh_configs_matches_the_per_candidate_reference(prepared: PreparedModel,
                                                                   predictor: DevicePredictor) -> None:
    raw = random_configs(60, seed=7)
    candidates = [(f"c{i}", config) for i, config in enumerate(raw)]
    # Twice: the second rank answers from what the first one memoized.
    for _ in range(2):
        ranking = rank_candidates(predictor, prepared, candidates, target_speedup=1.2, fast=True)
        baseline = reference_estimate(predictor, [k.key for k in prepared.kernels()])
        assert ranking["baseline_ms"] == pytest.approx(baseline["latency_ms"], rel=1e-12)
        assert ranking["baseline_interval_ms"] == pytest.approx(baseline["interval_ms"], rel=1e-12)
        rows = {row["name"]: row for row in ranking["ranked"]}
        for name, config in candidates:
            expected = reference_estimate(predictor, [k.key for k in reference_kernels(prepared.fast_path(),
                                                                                     parse_config(config))])
            row = rows[name]
            assert row["latency_ms"] == pytest.approx(expected["latency_ms"], rel=1e-12), name
            assert row["interval_ms"] == pytest.approx(expected["interval_ms"], rel=1e-12), name
            assert row["speedup"] == pytest.approx(baseline["latency_ms"] / expected["latency_ms"], rel=1e-12)
            assert row["meets_target"] == (row["speedup"] >= 1.2)
            assert row["table_hit_rate"] == expected["table_hit_rate"]
            assert row["sources"] == expected["sources"], name
        assert [row["latency_ms"] for row in ranking["ranked"]] == sorted(row["latency_ms"] for row in rows.values())
    # The configs reach every source: table hits among fresh kernels, regressor and fallback.
    sources = Counter(source for row in ranking["ranked"] for source in row["sources"])
    assert set(sources) == {"table", "regressor", "fallback"}


def test_fast_kernels_are_the_reference_kernels(prepared: PreparedModel) -> None:
    fast = prepared.fast_path()
    for config in map(parse_config, random_configs(40, seed=11)):
        expected = reference_kernels(fast, config)
        assert prepared.fast_kernels(config) == expected
        assert prepared.fast_keys(config) == [k.key for k in expected]


def test_a_candidate_figures_do_not_depend_on_its_batch(prepared: PreparedModel, predictor: DevicePredictor) -> None:
    """Alone, in a batch, in another order, memoized or not: the same figures (and the same warnings).

    Same to the last few bits only: a regressor's linear baseline is a matrix product, whose rounding may
    differ with the number of rows predicted at once (as it did before anything was memoized).
    """
    configs = [parse_config(raw) for raw in random_configs(12, seed=23)]
    flat_axes = {op: sorted(axes) for op, axes in predictor.flat_axes.items()}
    fresh = DevicePredictor(device=predictor.device, table=predictor.table, regressors=predictor.regressors,
                            overhead=predictor.overhead, flat_axes=flat_axes, fallback=predictor.fallback,
                            memory_fallback=predictor.memory_fallback)
    together = fresh.summarize_many([prepared.fast_keys(c) for c in configs])
    alone = [predictor.summarize_many([prepared.fast_keys(c)])[0] for c in reversed(configs)][::-1]
    full = predictor.estimate_many([prepared.fast_kernels(c) for c in configs])
    for summary, single, estimate in zip(together, alone, full, strict=True):
        for other in (single, estimate):
            assert other.latency_ms == pytest.approx(summary.latency_ms, rel=1e-12)
            assert other.interval_ms == pytest.approx(summary.interval_ms, rel=1e-12)
            assert (other.table_hit_rate, other.overhead_ms) == (summary.table_hit_rate, summary.overhead_ms)
            assert (other.sources, other.warnings) == (summary.sources, summary.warnings)
    assert any(summary.warnings for summary in together)
