"""TensorRT backend: engine inspector JSON to kernels (recorded JSON, no GPU) and, on a GPU, real engines."""
from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from predictor.kernels.keys import Kernel, KernelKey
from profiler.backends.base import BackendUnavailableError, MeasureProtocol
from profiler.backends.tensorrt import (
    TensorRTBackend,
    kernel_timings_from_layer_times,
    kernels_from_engine_info,
    time_until_stable,
)
from tests.factories import GraphBuilder

DATA = Path(__file__).parent / "data"
C1 = "/layer1/conv1/Conv + /layer1/bn1/BatchNormalization + /layer1/relu1/Relu"
C2 = "/layer1/conv2/Conv + /layer1/bn2/BatchNormalization + /layer1/add/Add + /layer1/relu2/Relu"
PW = "PWN(/head/Sigmoid, /head/Mul)"
MM = ("fc1.weight + /fc1/weight_quantizer/QuantizeLinear + /fc1/MatMul + PWN(/fc1/Add, PWN(/fc1/act/Relu))"
      " + /out_quantizer/QuantizeLinear")


def load_info(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def resnet_block_model() -> onnx.ModelProto:
    """The ONNX model trt_engine_resnet_block.json was built from (torch-style node names)."""
    g = GraphBuilder()
    y = g.conv("input", "/layer1/conv1/Conv", 64, 64, bias=False)
    y = g.batchnorm(y, "/layer1/bn1/BatchNormalization", 64)
    y = g.node("Relu", [y], "/layer1/relu1/Relu")
    y = g.conv(y, "/layer1/conv2/Conv", 64, 64, bias=False)
    y = g.batchnorm(y, "/layer1/bn2/BatchNormalization", 64)
    y = g.node("Add", [y, "input"], "/layer1/add/Add")
    r = g.node("Relu", [y], "/layer1/relu2/Relu")
    s = g.node("Sigmoid", [r], "/head/Sigmoid")
    y = g.node("Mul", [r, s], "/head/Mul")
    return g.model({"input": [1, 64, 56, 56]}, y)


def int8_gemm_model(batch: int = 32, k: int = 512, n: int = 256) -> onnx.ModelProto:
    """Explicitly quantized (Q/DQ) MatMul + bias + ReLU, as trt_engine_int8_gemm.json was built from."""
    g = GraphBuilder()
    scale = g.const("scale", np.array(0.05, np.float32))
    zero = g.const("zero", np.array(0, np.int8))

    def qdq(x: str, prefix: str) -> str:
        q = g.node("QuantizeLinear", [x, scale, zero], f"{prefix}/QuantizeLinear")
        return g.node("DequantizeLinear", [q, scale, zero], f"{prefix}/DequantizeLinear")

    x = qdq("input", "/fc1/input_quantizer")
    w = qdq(g.weight("fc1.weight", (k, n)), "/fc1/weight_quantizer")
    y = g.node("MatMul", [x, w], "/fc1/MatMul")
    y = g.node("Add", [y, g.weight("fc1.bias", (n,))], "/fc1/Add")
    y = g.node("Relu", [y], "/fc1/act/Relu")
    y = qdq(y, "/out_quantizer")
    return g.model({"input": [batch, k]}, y, elem_type=TensorProto.FLOAT)


def by_name(kernels: list[Kernel]) -> dict[str, Kernel]:
    return {k.name: k for k in kernels}


# --- engine inspector JSON -> kernels (no GPU) ---------------------------------------------------------


def test_resnet_block_layers_become_kernels_in_engine_order() -> None:
    kernels = kernels_from_engine_info(load_info("trt_engine_resnet_block.json"), resnet_block_model(),
                                       precision="fp16")
    assert [k.name for k in kernels] == [
        f"Reformatting CopyNode for Input Tensor 0 to {C1}", C1,
        f"Reformatting CopyNode for Input Tensor 1 to {C2}", C2,
        PW, f"Reformatting CopyNode for Output Tensor 0 to {PW}",
    ]
    assert [k.op_type for k in kernels] == [
        "TrtReformat", "TrtConvolution", "TrtReformat", "TrtConvolution", "TrtPointWise", "TrtReformat",
    ]
    kernel = by_name(kernels)
    assert kernel[C1].nodes == ("/layer1/conv1/Conv", "/layer1/bn1/BatchNormalization", "/layer1/relu1/Relu")
    assert kernel[C1].original_ops == ("Conv", "BatchNormalization", "Relu")
    assert kernel[C2].nodes == ("/layer1/conv2/Conv", "/layer1/bn2/BatchNormalization", "/layer1/add/Add",
                                "/layer1/relu2/Relu")
    assert kernel[PW].nodes == ("/head/Sigmoid", "/head/Mul")
    assert kernel[C1].runtime_node == C1


def test_fused_convolution_key_has_shapes_precision_and_tactic() -> None:
    kernels = by_name(kernels_from_engine_info(load_info("trt_engine_resnet_block.json"), resnet_block_model(),
                                               precision="fp16"))
    key = kernels[C2].key
    assert key.inputs == ((1, 64, 56, 56), (1, 64, 56, 56))
    assert key.outputs == ((1, 64, 56, 56),)
    assert key.weight == (64, 64, 3, 3)
    assert key.dtype == "float16" and key.bits == 16
    assert key.activation == "RELU"
    assert key.attr("kernel_shape") == (3, 3)
    assert key.attr("strides") == (1, 1)
    assert key.attr("pads") == (1, 1, 1, 1)
    assert key.attr("group") == 1
    assert key.attr("implementation") == "CaskConvolution"
    assert key.attr("tactic").startswith("sm80_xmma_fprop_implicit_gemm_f16f16")
    assert key.sparsity == 0.0 and key.sparsity_pattern == "dense"
    pointwise = kernels[PW].key
    assert pointwise.weight is None and pointwise.activation is None
    assert pointwise.attr("implementation") == "PointWiseV2"


def test_reformat_layers_are_kernels_of_their_own() -> None:
    kernels = kernels_from_engine_info(load_info("trt_engine_resnet_block.json"), resnet_block_model(),
                                       precision="fp16")
    reformats = [k for k in kernels if k.op_type == "TrtReformat"]
    assert len(reformats) == 3
    assert all(k.inserted and k.nodes == () for k in reformats)
    into_conv = reformats[0].key
    # Input reformat: fp32 row-major in, fp16 NHWC8 out; the formats are what tell reformats apart.
    assert into_conv.dtype == "float32" and into_conv.bits == 32
    assert into_conv.inputs == into_conv.outputs == ((1, 64, 56, 56),)
    assert into_conv.attr("input_formats") == ("Row major linear FP32",)
    assert into_conv.attr("output_formats") == ("Channel major FP16 format where channel % 8 == 0",)
    assert into_conv.attr("origin") == "REFORMAT"
    out_of_pointwise = reformats[2].key
    assert out_of_pointwise.dtype == "float16"
    assert out_of_pointwise.attr("output_formats") == ("Row major linear FP32",)
    assert into_conv != out_of_pointwise


def test_weight_shape_from_engine_json_without_original_model() -> None:
    kernels = by_name(kernels_from_engine_info(load_info("trt_engine_resnet_block.json"), precision="fp16"))
    # (OutMaps, C_in / Groups, *Kernel), checked against Weights.Count = 36864.
    assert kernels[C1].key.weight == (64, 64, 3, 3)
    assert kernels[C1].nodes == ("/layer1/conv1/Conv", "/layer1/bn1/BatchNormalization", "/layer1/relu1/Relu")
    assert kernels[C1].original_ops == ()


def test_int8_gemm_layers_carry_int8_bits_and_quantizer_nodes() -> None:
    kernels = kernels_from_engine_info(load_info("trt_engine_int8_gemm.json"), int8_gemm_model(), precision="int8")
    assert [k.op_type for k in kernels] == ["TrtReformat", "TrtMatrixMultiply", "TrtReformat"]
    quantize, gemm, dequantize = kernels
    assert quantize.nodes == ("/fc1/input_quantizer/QuantizeLinear",)
    assert not quantize.inserted and quantize.key.attr("origin") == "QDQ"
    assert quantize.key.dtype == "float32"
    assert quantize.key.attr("output_formats") == ("Row major Int8 format",)
    assert gemm.name == MM
    assert gemm.nodes == (
        "/fc1/input_quantizer/DequantizeLinear", "/fc1/weight_quantizer/QuantizeLinear",
        "/fc1/weight_quantizer/DequantizeLinear", "/fc1/MatMul", "/fc1/Add", "/fc1/act/Relu",
        "/out_quantizer/QuantizeLinear",
    )
    assert gemm.key.inputs == ((32, 512),) and gemm.key.outputs == ((32, 256),)
    # The weight shape comes from the original initializer behind the weight's Q/DQ pair.
    assert gemm.key.weight == (512, 256)
    assert gemm.key.dtype == "int8" and gemm.key.bits == 8
    assert gemm.key.activation == "RELU"
    assert gemm.key.attr("tactic").startswith("sm80_xmma_gemm_i8i8")
    assert dequantize.nodes == ("/out_quantizer/DequantizeLinear",)
    assert dequantize.key.dtype == "int8" and dequantize.key.bits == 8


def test_fused_names_are_parsed_when_metadata_is_missing() -> None:
    info = load_info("trt_engine_int8_gemm.json")
    for layer in info["Layers"]:
        layer.pop("Metadata")
    gemm = kernels_from_engine_info(info, int8_gemm_model(), precision="int8")[1]
    # "fc1.weight" is an initializer, not a node: dropped; PWN(...) wrappers are unwrapped.
    assert gemm.nodes == ("/fc1/weight_quantizer/QuantizeLinear", "/fc1/MatMul", "/fc1/Add", "/fc1/act/Relu",
                          "/out_quantizer/QuantizeLinear")
    unfiltered = kernels_from_engine_info(info, precision="int8")[1]
    assert unfiltered.nodes[0] == "fc1.weight" and len(unfiltered.nodes) == 6


def test_keys_round_trip_through_json() -> None:
    for name, model, precision in (("trt_engine_resnet_block.json", resnet_block_model(), "fp16"),
                                   ("trt_engine_int8_gemm.json", int8_gemm_model(), "int8")):
        for kernel in kernels_from_engine_info(load_info(name), model, precision=precision):
            assert KernelKey.from_dict(json.loads(json.dumps(kernel.key.to_dict()))) == kernel.key
            assert Kernel.from_dict(kernel.to_dict()) == kernel


def test_engine_info_as_json_text_gives_the_same_kernels() -> None:
    text = (DATA / "trt_engine_resnet_block.json").read_text()
    assert kernels_from_engine_info(text, precision="fp16") == kernels_from_engine_info(
        json.loads(text), precision="fp16")


def test_layer_names_only_detail_gives_named_kernels_without_shapes() -> None:
    names = [layer["Name"] for layer in load_info("trt_engine_resnet_block.json")["Layers"]]
    kernels = kernels_from_engine_info({"Layers": names, "Bindings": ["input", "output"]}, resnet_block_model(),
                                       precision="fp16")
    assert [k.name for k in kernels] == names
    assert [k.op_type for k in kernels] == ["TrtReformat", "TrtLayer", "TrtReformat", "TrtLayer", "TrtLayer",
                                            "TrtReformat"]
    assert kernels[1].nodes == ("/layer1/conv1/Conv", "/layer1/bn1/BatchNormalization", "/layer1/relu1/Relu")
    assert kernels[4].nodes == ("/head/Sigmoid", "/head/Mul")
    assert kernels[0].nodes == ()
    assert all(k.key.inputs == () and k.key.dtype == "float16" and k.key.bits == 16 for k in kernels)


def test_sparse_tactic_without_original_weights_is_two_four() -> None:
    info = load_info("trt_engine_resnet_block.json")
    info["Layers"][1]["HasSparseWeights"] = 1
    key = kernels_from_engine_info(info, precision="fp16")[1].key
    assert key.sparsity == 0.5 and key.sparsity_pattern == "2:4"


def test_malformed_engine_info_is_rejected() -> None:
    with pytest.raises(ValueError, match="Layers"):
        kernels_from_engine_info({"Bindings": []}, precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        kernels_from_engine_info({"Layers": []}, precision="fp8")


# --- measurement logic (no GPU) ------------------------------------------------------------------------


def test_time_until_stable_stops_at_stable_median_after_warmup() -> None:
    calls: list[int] = []

    def run_once() -> float:
        calls.append(1)
        return 1.0 if len(calls) > 3 else 100.0  # three slow warm-up runs, then steady

    samples = time_until_stable(run_once, MeasureProtocol(warmup_runs=3, min_repeats=10, max_repeats=50))
    assert samples == [1.0] * 10
    assert len(calls) == 13


def test_time_until_stable_stops_at_max_repeats_when_noisy() -> None:
    values = iter(np.random.default_rng(0).uniform(0.5, 5.0, size=1000).tolist())
    samples = time_until_stable(lambda: next(values),
                                MeasureProtocol(warmup_runs=0, min_repeats=5, max_repeats=20, max_seconds=60))
    assert len(samples) == 20


def test_layer_times_map_to_kernels_by_layer_name(caplog: pytest.LogCaptureFixture) -> None:
    kernels = kernels_from_engine_info(load_info("trt_engine_int8_gemm.json"), precision="int8")
    layer_times = {
        "/fc1/input_quantizer/QuantizeLinear": [0.004, 0.005, 0.006],
        MM: [0.020, 0.022, 0.021],
        "some layer the inspector did not list": [0.001],
    }
    with caplog.at_level("WARNING"):
        timings = kernel_timings_from_layer_times(kernels, layer_times)
    assert [t.kernel.name for t in timings] == ["/fc1/input_quantizer/QuantizeLinear", MM]
    assert timings[1].timing.median_ms == pytest.approx(0.021)
    assert timings[1].timing.repeats == 3
    assert "no profiler times for TensorRT layer /out_quantizer/DequantizeLinear" in caplog.text
    assert "did not list" in caplog.text


# --- backend construction ------------------------------------------------------------------------------


def test_backend_without_tensorrt_raises_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, installed or not
    with pytest.raises(BackendUnavailableError, match=r"tensorrt is not installed: pip install '\.\[tensorrt\]'"):
        TensorRTBackend()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_backend_here_is_unavailable_with_install_hint() -> None:
    with pytest.raises(BackendUnavailableError, match=r"pip install '\.\[tensorrt\]'"):
        TensorRTBackend()


def fake_cuda_runtime(device_count: int) -> types.SimpleNamespace:
    errors = types.SimpleNamespace(cudaSuccess=0, cudaErrorNoDevice=100)
    status = errors.cudaSuccess if device_count else errors.cudaErrorNoDevice
    return types.SimpleNamespace(cudaError_t=errors, cudaGetDeviceCount=lambda: (status, device_count))


def test_backend_without_cuda_device_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cuda_runtime(device_count=0))
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        TensorRTBackend()


def test_runtime_names_precision_sparsity_and_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", fake_cuda_runtime(device_count=1))
    spec = TensorRTBackend(precision="int8", sparse_weights=True).runtime()
    assert (spec.backend, spec.execution_provider, spec.threads, spec.runtime_version) == (
        "tensorrt", "TensorRT-int8-sparse", 1, "10.3.0")
    assert TensorRTBackend().runtime().execution_provider == "TensorRT-fp16"
    with pytest.raises(ValueError, match="precision"):
        TensorRTBackend(precision="fp8")


# --- real engines (GPU with TensorRT only) -------------------------------------------------------------


@pytest.fixture(scope="module")
def gpu_backend() -> TensorRTBackend:
    if importlib.util.find_spec("tensorrt") is None:
        pytest.skip("tensorrt is not installed (pip install '.[tensorrt]'); GPU tests need it")
    try:
        return TensorRTBackend(precision="fp16")
    except BackendUnavailableError as exc:
        pytest.skip(f"TensorRT backend unavailable here: {exc}")


def test_real_engine_kernels_cover_the_resnet_block(gpu_backend: TensorRTBackend) -> None:
    kernels = gpu_backend.extract_kernels(resnet_block_model())
    covered = {node for k in kernels for node in k.nodes}
    # BatchNorms fold into the convolutions' weights; every compute node belongs to some layer.
    assert {"/layer1/conv1/Conv", "/layer1/conv2/Conv", "/layer1/add/Add"} <= covered
    convs = [k for k in kernels if k.op_type == "TrtConvolution"]
    assert len(convs) == 2
    assert all(k.key.weight == (64, 64, 3, 3) and k.key.bits == 16 for k in convs)
    assert all(KernelKey.from_dict(k.key.to_dict()) == k.key for k in kernels)


def test_real_engine_measurements_are_positive_and_consistent(gpu_backend: TensorRTBackend) -> None:
    protocol = MeasureProtocol(warmup_runs=3, min_repeats=10, max_repeats=50, max_seconds=2.0)
    model = resnet_block_model()
    total = gpu_backend.measure_model(model, protocol)
    assert 0 < total.p10_ms <= total.median_ms <= total.p90_ms < 100
    timings = gpu_backend.measure_kernels(model, protocol)
    compute = [t for t in timings if t.kernel.op_type == "TrtConvolution"]
    assert len(compute) == 2 and all(t.timing.median_ms > 0 for t in compute)
    # Per-layer times add up to about one inference (the profiler adds per-layer synchronisation).
    assert sum(t.timing.median_ms for t in timings) == pytest.approx(total.median_ms, rel=1.0)
