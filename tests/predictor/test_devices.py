"""What decides a device's kernels, and building them as the device does or refusing to.

The ARM profile in tests/data/devices was observed by the agent on an emulated Cortex-A72 (onnxruntime 1.24.4 on
aarch64, qemu-user: tests/aarch64/build_env.sh), the way a recorded TensorRT inspector output stands in for a GPU.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from predictor.compression.config import parse_config
from predictor.estimation.prepared import PreparedModel
from predictor.kernels.keys import extract_kernels
from predictor.model.graph import load_model
from predictor.runtime.devices import (
    CATEGORIES,
    KernelProfile,
    UnreproducibleKernelsError,
    categories_of,
    cpu_features,
    kernels_for_device,
    observe_kernel_profile,
    reproduce_kernels,
)
from predictor.runtime.optimizer import RuntimeSpec, local_runtime, nchwc_block_size

DATA = Path(__file__).resolve().parents[1] / "data"
RUNTIME = local_runtime(1)


@pytest.fixture(scope="module")
def own_profile() -> KernelProfile:
    return observe_kernel_profile(RUNTIME)


@pytest.fixture(scope="module")
def arm_profile() -> KernelProfile:
    return KernelProfile.from_dict(json.loads((DATA / "devices" / "arm_cortex_a72_ort_1.24.4.json").read_text()))


def test_the_agent_observes_its_runtime_cpu_and_probe_kernels(own_profile: KernelProfile) -> None:
    assert own_profile.runtime_version == RUNTIME.runtime_version
    assert own_profile.nchwc_block == nchwc_block_size(RUNTIME)
    assert set(own_profile.isa) == set(cpu_features())
    assert set(own_profile.probes) == set(CATEGORIES)
    assert all(hashes for probes in own_profile.probes.values() for hashes in probes.values())
    assert KernelProfile.from_dict(json.loads(json.dumps(own_profile.to_dict()))) == own_profile


def test_a_device_like_this_host_is_built_as_this_host_builds(own_profile: KernelProfile) -> None:
    built = reproduce_kernels("same", own_profile, RUNTIME)
    assert built.reproduced == frozenset(CATEGORIES) and not built.differs
    assert built.runtime.disabled_optimizers == ()


def test_an_arm_device_is_built_without_the_nchwc_layout(arm_profile: KernelProfile) -> None:
    assert (arm_profile.machine, arm_profile.nchwc_block) == ("aarch64", 0)
    built = reproduce_kernels("arm", arm_profile, RUNTIME)
    assert "NchwcTransformer" in built.runtime.disabled_optimizers
    assert {"fp32", "int8_static_u8", "int8_dynamic"} <= built.reproduced
    model = load_model(DATA / "real" / "tiny_resnet18_prune88.onnx")
    kernels = extract_kernels(model, built.runtime)
    assert kernels and not any(k.op_type.startswith("Nchwc") for k in kernels)
    assert any(k.op_type.startswith("Nchwc") for k in extract_kernels(model, RUNTIME))
    built.check(categories_of(model), {k.op_type for k in kernels})  # a CNN: built as the device builds it


def test_kinds_of_model_an_arm_device_builds_otherwise_are_refused_saying_why(arm_profile: KernelProfile) -> None:
    """On ARM onnxruntime fuses int8 layers with int8 activations (quantize_static's defaults) into QLinearConv;
    on this AVX2 host they stay float convs between Q/DQ: no setting of this host's runtime builds them as ARM does."""
    built = reproduce_kernels("arm", arm_profile, RUNTIME)
    model = load_model(DATA / "real" / "tiny_mobilenet_v2_qdq.onnx")
    assert "int8_static_s8" in categories_of(model)
    kernels = extract_kernels(model, built.runtime)
    with pytest.raises(UnreproducibleKernelsError) as caught:
        built.check(categories_of(model), {k.op_type for k in kernels})
    message = str(caught.value)
    assert "arm" in message and "1.24.4" in message and "probe cnn.onnx" in message


def test_a_transformer_whose_transposes_another_runtime_version_fuses_otherwise_is_refused(
        arm_profile: KernelProfile) -> None:
    """onnxruntime 1.24 leaves a dynamo-exported GPT-2's attention transposes as kernels of their own where 1.32
    merges them: this host cannot tell which attention blocks a version builds otherwise, so models with attention
    are refused for that device, not mispredicted; convolutional ones are built as the device builds them."""
    built = reproduce_kernels("arm", arm_profile, RUNTIME)
    assert "fp32" in built.reproduced and not built.ops.get("fp32")
    assert built.ops.get("fp32_transformer"), built.differs
    for name in ("tiny_gpt2_dynamo", "tiny_bert"):
        model = load_model(DATA / "real" / f"{name}.onnx")
        assert "fp32_transformer" in categories_of(model)
        with pytest.raises(UnreproducibleKernelsError, match="gpt2.onnx"):
            built.check(categories_of(model), {k.op_type for k in extract_kernels(model, built.runtime)})


def test_configs_name_the_kinds_they_need() -> None:
    model = load_model(DATA / "real" / "tiny_bert.onnx")
    assert categories_of(model) == {"fp32", "fp32_transformer"}
    assert categories_of(load_model(DATA / "real" / "tiny_resnet18_prune88.onnx")) == {"fp32"}
    assert categories_of(model, parse_config({"default": {"bits": 8, "quantization": "dynamic"}})) == \
        {"fp32", "fp32_transformer", "int8_dynamic"}
    assert "int8_static_s8" in categories_of(model, parse_config({"default": {"bits": 8, "activation_type": "int8"}}))
    assert "int4" in categories_of(load_model(DATA / "real" / "tiny_bert_int4.onnx"))
    assert "int8_dynamic" in categories_of(load_model(DATA / "real" / "tiny_bert_dynamic_int8.onnx"))


def test_a_prepared_model_names_the_kinds_each_config_needs_as_categories_of_does() -> None:
    """A prepared model reads its own kinds once; each config adds its own, as categories_of finds them."""
    for name in ("tiny_bert.onnx", "tiny_bert_int4.onnx", "tiny_resnet18_prune88.onnx"):
        prepared = PreparedModel.create(load_model(DATA / "real" / name), RUNTIME)
        for raw in ({}, {"default": {"bits": 8, "quantization": "dynamic"}}, {"default": {"bits": 16}},
                    {"default": {"prune_ratio": 0.3}, "layers": {prepared.node_names[0]: {"bits": 8}}}):
            config = parse_config(raw)
            assert prepared.categories(config) == categories_of(prepared.model, config), (name, raw)
    assert prepared.categories(parse_config({"default": {"bits": 16}})) == {"fp32", "fp16"}


def test_tensorrt_devices_and_devices_without_a_profile_of_another_runtime_are_refused() -> None:
    trt = kernels_for_device("gpu", RuntimeSpec(backend="tensorrt", execution_provider="", runtime_version="10.3"),
                             None, RUNTIME)
    with pytest.raises(UnreproducibleKernelsError, match="tensorrt builds an engine's kernels"):
        trt.check({"fp32"})
    old = kernels_for_device("old", replace(RUNTIME, runtime_version="1.18.0"), None, RUNTIME)
    with pytest.raises(UnreproducibleKernelsError, match="no kernel profile"):
        old.check({"fp32"})
    kernels_for_device("here", RUNTIME, None, RUNTIME).check(set(CATEGORIES))


def test_a_profile_of_another_version_is_refused_not_misread() -> None:
    with pytest.raises(ValueError, match="version"):
        KernelProfile.from_dict({"version": 99})


def test_the_nchwc_block_follows_the_cpu_even_for_convs_narrower_than_it() -> None:
    # onnxruntime blocks an 8-channel conv on AVX-512 too, padding it to 16: the block is read off the padding.
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if "avx512f" in flags:
        expected = 16
    elif "avx2" in flags:
        expected = 8
    else:
        pytest.skip("an x86 CPU with AVX2 or AVX-512 is needed to know the expected block")
    assert nchwc_block_size(local_runtime(threads=1)) == expected
