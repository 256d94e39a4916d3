"""The kernel-level config path against the real thing: compress, optimize, extract."""
from __future__ import annotations

from collections import Counter

import pytest

import predictor.compression.fastpath as fastpath
from predictor.compression.config import parse_config
from predictor.estimation.prepared import PreparedModel
from predictor.runtime.optimizer import local_runtime, nchwc_block_size
from tests import factories

RUNTIME = local_runtime(1)


def inverted_residual_net():  # type: ignore[no-untyped-def]
    """Two MobileNetV2-style blocks (expand, depthwise, project, residual) and a classifier."""
    g = factories.GraphBuilder()
    y = g.conv("input", "stem", 3, 16)
    y = g.node("Relu", [y], "stem_relu")
    for index in range(2):
        block = f"block{index}"
        e = g.conv(y, f"{block}.expand", 16, 64, k=1)
        e = g.node("Relu", [e], f"{block}.expand_relu")
        d = g.conv(e, f"{block}.dw", 64, 64, k=3, group=64)
        d = g.node("Relu", [d], f"{block}.dw_relu")
        p = g.conv(d, f"{block}.project", 64, 16, k=1)
        y = g.node("Add", [p, y], f"{block}.add")
    y = g.node("GlobalAveragePool", [y], "gap")
    y = g.node("Flatten", [y], "flatten")
    y = g.node("Gemm", [y, g.weight("fc.weight", (10, 16)), g.weight("fc.bias", (10,))], "fc", transB=1)
    return g.model({"input": [1, 3, 32, 32]}, y)


@pytest.fixture(scope="module")
def prepared() -> PreparedModel:
    model = PreparedModel.create(inverted_residual_net(), RUNTIME)
    model.fast_path()
    return model


@pytest.mark.parametrize("config", [
    {},
    {"default": {"bits": 8}},
    {"default": {"bits": 8, "quantization": "dynamic"}},
    {"default": {"bits": 16}},
    {"default": {"prune_ratio": 0.3}},
    {"default": {"bits": 8, "prune_ratio": 0.3}},
    {"default": {"bits": 8, "quantization": "dynamic", "prune_ratio": 0.3}},
    {"default": {"sparsity": 0.9}},
    {"default": {"sparsity_pattern": "2:4"}},
], ids=lambda c: str(c))
def test_fast_kernels_are_the_kernels_the_runtime_executes(prepared: PreparedModel, config: dict) -> None:
    parsed = parse_config(config)
    fast = Counter(k.key.key_hash for k in prepared.fast_kernels(parsed))
    exact = Counter(k.key.key_hash for k in prepared.kernels(parsed))
    assert fast == exact


def test_fresh_configs_need_no_quantizer_and_no_runtime_session(prepared: PreparedModel,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fresh config must not compress or optimize the model")

    monkeypatch.setattr(fastpath, "apply_config", forbidden)
    monkeypatch.setattr(fastpath, "optimize_model", forbidden)
    monkeypatch.setattr(fastpath, "kernels_from_optimized", forbidden)
    kernels = prepared.fast_kernels(parse_config({"default": {"bits": 8, "prune_ratio": 0.37, "sparsity": 0.6}}))
    conv = next(k for k in kernels if k.name == "block1.expand")
    assert conv.key.bits == 8 and conv.key.sparsity == 0.6
    assert conv.key.weight[0] == 40  # floor(64 x 0.63)


def layers(kernels) -> set[tuple[str, tuple[int, ...] | None, int]]:  # type: ignore[no-untyped-def]
    """What each original layer computes: name, weight shape and bit-width (layout aside: a blocked layer's
    weight has its channels padded to the runtime's block, the same layer unblocked has not)."""
    block = nchwc_block_size(RUNTIME) or 1
    return {(k.name, tuple(-(-d // block) * block if i < 2 else d for i, d in enumerate(k.key.weight)), k.key.bits)
            for k in kernels if k.nodes and k.key.weight is not None}


@pytest.mark.parametrize("config", [
    {"default": {"prune_ratio": 0.5}},
    {"default": {"prune_ratio": 0.22}, "layers": {"block1.*": {"prune_ratio": 0.61}}},
    {"default": {"bits": 8}, "layers": {"block0.*": {"bits": 32}}},
], ids=lambda c: str(c))
def test_unlearned_configs_get_every_layer_right_and_approximate_the_layout(prepared: PreparedModel,
                                                                           config: dict) -> None:
    """Pruning ratios the model was not probed at and mixed precision: the runtime's layout choices (blocked
    or not, reorders, (de)quantize at precision boundaries) are approximated; the layers are exact."""
    parsed = parse_config(config)
    assert layers(prepared.fast_kernels(parsed)) == layers(prepared.kernels(parsed))
