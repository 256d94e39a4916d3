"""The profiling plan: real architectures first, every config of the space, then random variants."""
from __future__ import annotations

import itertools

from predictor.config import parse_config
from profiler.plan import DEFAULT_PRIORS_DIR, _resizable, default_plan, model_plan, prior_index
from profiler.skeleton import load_skeleton, materialize_skeleton
from tests import factories


def test_priors_come_first_in_priority_order_then_sparsity_then_random() -> None:
    entries = prior_index()
    items = list(itertools.islice(default_plan(), 400))
    stages = [item.stage for item in items]
    first_random = stages.index("random")
    assert stages[:first_random] == sorted(stages[:first_random], key=["priors", "sparsity"].index)
    assert [item.label.split("/")[0] for item in items[: len(entries)]] == [e["file"][:-5] for e in entries]
    assert items[0].config.is_identity and items[len(entries)].config.resolve("x").bits == 8
    assert len({item.item_id for item in items}) == len(items)


def test_random_variants_resize_only_architectures_that_allow_it() -> None:
    assert _resizable(load_skeleton(DEFAULT_PRIORS_DIR / "mobilenet_v2_224.json"))
    assert not _resizable(load_skeleton(DEFAULT_PRIORS_DIR / "vit_tiny_224.json"))
    randoms = [item for item in itertools.islice(default_plan(), 600) if item.stage == "random"][:20]
    for item in randoms:
        if "vit" in item.label:
            assert "@224/" in item.label


def test_skeleton_materializes_the_architecture() -> None:
    skeleton = load_skeleton(DEFAULT_PRIORS_DIR / "resnet18_224.json")
    model = materialize_skeleton(skeleton)
    assert [n.name for n in model.graph.node] == [n["name"] for n in skeleton["nodes"]]
    smaller = materialize_skeleton(skeleton, input_shapes={"input": [1, 3, 96, 96]})
    assert [d.dim_value for d in smaller.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 96, 96]


def test_model_plan_is_the_model_and_its_configs() -> None:
    configs = [("noop", parse_config({})), ("int8", parse_config({"default": {"bits": 8}}))]
    items = model_plan(factories.gemm_model(), "fc", configs)
    assert [item.label for item in items] == ["fc/fp32", "fc/int8"]
