"""TensorRT backend: kernels are the engine's layers as its inspector reports them, timed on the GPU.

TensorRT decides fusion (Conv+BN+ReLU+Add, pointwise chains), precision per layer and the layout
reorders between layers ("Reformatting CopyNode ..."), so kernels come from the built engine, never
from fusion rules of our own: the engine inspector's JSON (ProfilingVerbosity.DETAILED) lists every
layer with its shapes, formats, weights and chosen tactic. `kernels_from_engine_info` turns that JSON
into kernels and needs no GPU, so it is tested from recorded JSON; the backend builds the engine,
times one inference with CUDA events and each layer through an IProfiler.

tensorrt and cuda-python are imported lazily (extra `tensorrt`); without them or without a CUDA
device, constructing the backend raises BackendUnavailableError saying which.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from predictor.errors import InvalidModelError
from predictor.kernels.keys import Kernel, KernelKey, name_unnamed_nodes, weight_sparsity
from predictor.memo import BoundedMemo
from predictor.model.graph import initializer_arrays
from predictor.runtime.optimizer import RuntimeSpec
from profiler.backends.base import (
    BackendUnavailableError,
    KernelTiming,
    MeasureProtocol,
    Timing,
    median_is_stable,
    summarize_ms,
)

__all__ = [
    "TensorRTBackend",
    "kernel_timings_from_layer_times",
    "kernels_from_engine_info",
    "time_until_stable",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "tensorrt is not installed: pip install '.[tensorrt]'"

# Datatype words in TensorRT's "Format/Datatype" strings ("Channel major FP16 format where channel % 8 == 0",
# "Thirty-two wide channel vectorized row major Int8 format") and in "Weights" types ("Half", "Int8").
_DATATYPE_WORDS: dict[str, tuple[str, int]] = {
    "fp32": ("float32", 32), "float": ("float32", 32), "float32": ("float32", 32),
    "fp16": ("float16", 16), "half": ("float16", 16), "float16": ("float16", 16),
    "bf16": ("bfloat16", 16), "bfloat16": ("bfloat16", 16),
    "fp8": ("float8", 8), "fp4": ("float4", 4),
    "int8": ("int8", 8), "uint8": ("uint8", 8), "int4": ("int4", 4),
    "int32": ("int32", 32), "int64": ("int64", 64), "bool": ("bool", 8),
    "double": ("float64", 64), "fp64": ("float64", 64),
}
_PRECISION_DTYPES = {"fp32": ("float32", 32), "fp16": ("float16", 16), "int8": ("int8", 8)}
# Layer kinds whose whole meaning is the change of layout or type; their formats go into the key.
_LAYOUT_KINDS = {"Reformat", "NoOp"}
# Implementation prefixes of LayerType ("CaskConvolution", "CudaDepthwiseConvolution") and version suffixes.
_IMPLEMENTATION_PREFIX = re.compile(r"^(Cask|Cuda|Cublas|Cudnn)(?=[A-Z])")
_VERSION_SUFFIX = re.compile(r"V\d+$")
_METADATA_NODE = re.compile(r"\[ONNX Layer: (.*?)\]")
_NAME_SEPARATORS = re.compile(r"\s\+\s|,\s|\.\.\.")
_INSERTED_NAME = re.compile(r"^Reformatting CopyNode for (Input|Output) Tensor \d+ to ")
_WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class _TensorDesc:
    shape: tuple[int, ...] | None
    fmt: str


def _datatype(text: str | None) -> tuple[str, int] | None:
    """(dtype, bits) named in a TensorRT format or type string, None if it names none."""
    if not text:
        return None
    for word in re.split(r"[^0-9A-Za-z]+", text):
        found = _DATATYPE_WORDS.get(word.lower())
        if found is not None:
            return found
    return None


def _tensor_descs(entries: Any) -> list[_TensorDesc]:
    descs: list[_TensorDesc] = []
    for entry in entries or ():
        dims = entry.get("Dimensions") if isinstance(entry, Mapping) else None
        shape = tuple(int(d) for d in dims) if isinstance(dims, list) else None
        fmt = str(entry.get("Format/Datatype", "")) if isinstance(entry, Mapping) else ""
        descs.append(_TensorDesc(shape, fmt))
    return descs


def _layer_kind(layer: Mapping[str, Any]) -> str:
    """What a layer computes: its ParameterType, else its LayerType without implementation prefix."""
    if layer.get("ParameterType"):
        return str(layer["ParameterType"])
    layer_type = str(layer.get("LayerType") or "Layer")
    return _VERSION_SUFFIX.sub("", _IMPLEMENTATION_PREFIX.sub("", layer_type)) or layer_type


def _names_in_layer_name(name: str) -> list[str]:
    """Node names TensorRT joined into a fused layer's name ("a + b + PWN(c, PWN(d))", "{ForeignNode[a...b]}")."""
    if _INSERTED_NAME.match(name):
        return []
    text = name.strip()
    if text.startswith("{ForeignNode[") and text.endswith("]}"):
        text = text[len("{ForeignNode["):-2]
    tokens: list[str] = []
    for part in _NAME_SEPARATORS.split(text):
        part = part.strip()
        while part.startswith("PWN("):
            part = part[len("PWN("):].strip()
        while part.endswith(")") and part.count(")") > part.count("("):
            part = part[:-1].strip()
        if part and part not in tokens:
            tokens.append(part)
    return tokens


def _names_in_metadata(metadata: str) -> list[str]:
    """ONNX node names in a layer's Metadata ("[ONNX Layer: a]\\x1f[ONNX Layer: b]")."""
    names: list[str] = []
    for name in _METADATA_NODE.findall(metadata):
        if name not in names:
            names.append(name)
    return names


@dataclass
class _Original:
    """What the kernels need from the original model: node order, op types and weights."""

    index: dict[str, int]
    op_types: dict[str, str]
    weights: dict[str, np.ndarray]

    @classmethod
    def describe(cls, model: onnx.ModelProto) -> _Original:
        arrays = initializer_arrays(model)
        producer = {out: node for node in model.graph.node for out in node.output if out}
        weights: dict[str, np.ndarray] = {}
        for node in model.graph.node:
            if node.op_type in _WEIGHTED_OPS and len(node.input) > 1:
                array = _trace_constant(node.input[1], arrays, producer)
                if array is not None:
                    weights[node.name] = array
        return cls(
            index={node.name: i for i, node in enumerate(model.graph.node)},
            op_types={node.name: node.op_type for node in model.graph.node},
            weights=weights,
        )


def _trace_constant(
    tensor: str, arrays: dict[str, np.ndarray], producer: dict[str, onnx.NodeProto]
) -> np.ndarray | None:
    """The initializer behind a weight input, looking through Q/DQ pairs (explicit quantization)."""
    for _ in range(4):
        if tensor in arrays:
            return arrays[tensor]
        node = producer.get(tensor)
        if node is None or node.op_type not in {"QuantizeLinear", "DequantizeLinear"}:
            return None
        tensor = node.input[0]
    return None


def _layer_nodes(layer: Mapping[str, Any], name: str, original: _Original | None) -> tuple[str, ...]:
    metadata = layer.get("Metadata")
    candidates = _names_in_metadata(str(metadata)) if metadata else []
    if not candidates:
        candidates = _names_in_layer_name(name)
    if layer.get("Origin") == "REFORMAT":
        candidates = []
    if original is None:
        return tuple(candidates)
    known = [c for c in candidates if c in original.index]
    return tuple(sorted(known, key=original.index.__getitem__))


def _conv_weight_shape(layer: Mapping[str, Any], inputs: list[_TensorDesc], count: int) -> tuple[int, ...] | None:
    """(out, in/groups, *kernel) of a convolution, checked against the weight count TensorRT reports."""
    kernel, out_maps = layer.get("Kernel"), layer.get("OutMaps")
    if not isinstance(kernel, list) or out_maps is None or not inputs or inputs[0].shape is None:
        return None
    if len(inputs[0].shape) < 2:
        return None
    groups = int(layer.get("Groups", 1)) or 1
    shape = (int(out_maps), inputs[0].shape[1] // groups, *(int(k) for k in kernel))
    return shape if int(np.prod(shape)) == count else None


def _layer_attrs(layer: Mapping[str, Any], kind: str, inputs: list[_TensorDesc],
                 outputs: list[_TensorDesc]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    tactic = layer.get("TacticName") or layer.get("TacticValue")
    if tactic:
        attrs["tactic"] = str(tactic)
    layer_type = layer.get("LayerType")
    if layer_type and layer_type != kind:
        attrs["implementation"] = str(layer_type)
    for source, target in (("Kernel", "kernel_shape"), ("WindowSize", "kernel_shape"), ("Stride", "strides"),
                           ("Dilation", "dilations"), ("Groups", "group"), ("PoolingType", "mode"),
                           ("MatrixOpA", "op_a"), ("MatrixOpB", "op_b"), ("Origin", "origin")):
        if source in layer and target not in attrs:
            attrs[target] = layer[source]
    if "PrePadding" in layer or "PostPadding" in layer:
        attrs["pads"] = [*layer.get("PrePadding", []), *layer.get("PostPadding", [])]
    if kind in _LAYOUT_KINDS:
        attrs["input_formats"] = [d.fmt for d in inputs]
        attrs["output_formats"] = [d.fmt for d in outputs]
    return attrs


def _kernel_from_layer(layer: Mapping[str, Any], original: _Original | None, precision: str) -> Kernel:
    name = str(layer.get("Name", ""))
    kind = _layer_kind(layer)
    inputs, outputs = _tensor_descs(layer.get("Inputs")), _tensor_descs(layer.get("Outputs"))
    nodes = _layer_nodes(layer, name, original)
    first_fmt = inputs[0].fmt if inputs else (outputs[0].fmt if outputs else "")
    dtype, bits = _datatype(first_fmt) or _PRECISION_DTYPES[precision]
    weights = layer.get("Weights") if isinstance(layer.get("Weights"), Mapping) else None
    weight_shape: tuple[int, ...] | None = None
    sparsity, pattern = 0.0, "dense"
    weight_array = next((original.weights[n] for n in nodes if n in original.weights), None) if original else None
    if weight_array is not None:
        weight_shape = tuple(int(d) for d in weight_array.shape)
        sparsity, pattern = weight_sparsity(weight_array)
    if weights is not None:
        count = int(weights.get("Count", 0))
        if weight_shape is None and count:
            weight_shape = (_conv_weight_shape(layer, inputs, count) if kind == "Convolution" else None) or (count,)
        weight_type = _datatype(str(weights.get("Type", "")))
        if weight_type is not None:
            bits = weight_type[1]
    if int(layer.get("HasSparseWeights", 0)) and pattern == "dense":
        # TensorRT chose a 2:4 sparse tactic; without the original weights that is all we know.
        sparsity, pattern = 0.5, "2:4"
    activation = layer.get("Activation")
    key = KernelKey.from_dict({
        "op_type": f"Trt{kind}",
        "inputs": [d.shape for d in inputs],
        "outputs": [d.shape for d in outputs],
        "weight": weight_shape,
        "activation": None if activation in (None, "NONE") else str(activation),
        "attrs": _layer_attrs(layer, kind, inputs, outputs),
        "dtype": dtype,
        "bits": bits,
        "sparsity": sparsity,
        "sparsity_pattern": pattern,
    })
    original_ops = tuple(original.op_types[n] for n in nodes) if original else ()
    return Kernel(name=name, key=key, nodes=nodes, runtime_node=name, original_ops=original_ops)


def _kernel_from_layer_name(name: str, original: _Original | None, precision: str) -> Kernel:
    """A kernel from a LAYER_NAMES_ONLY entry: names and fused nodes, but no shapes to key a table with."""
    nodes = tuple(_names_in_layer_name(name))
    if original is not None:
        nodes = tuple(sorted((n for n in nodes if n in original.index), key=original.index.__getitem__))
    dtype, bits = _PRECISION_DTYPES[precision]
    kind = "Reformat" if _INSERTED_NAME.match(name) else "Layer"
    key = KernelKey(op_type=f"Trt{kind}", inputs=(), outputs=(), dtype=dtype, bits=bits)
    original_ops = tuple(original.op_types[n] for n in nodes) if original else ()
    return Kernel(name=name, key=key, nodes=nodes, runtime_node=name, original_ops=original_ops)


def kernels_from_engine_info(
    info: Mapping[str, Any] | str,
    original_model: onnx.ModelProto | None = None,
    *,
    precision: str,
) -> list[Kernel]:
    """Kernels of a TensorRT engine from its inspector JSON, in execution order; needs no GPU.

    Every engine layer is one kernel named after the layer, reformat layers included. `nodes` are the
    ONNX nodes the layer covers, read from its Metadata ("[ONNX Layer: ...]", TensorRT >= 8.6) or else
    parsed from its fused name; with `original_model`, only names of its nodes are kept (in graph order)
    and weight shapes and sparsity come from its initializers. `precision` ("fp32", "fp16", "int8", the
    builder's setting) is the datatype of layers whose JSON names none (LAYER_NAMES_ONLY detail).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    data = json.loads(info) if isinstance(info, str) else info
    layers = data.get("Layers") if isinstance(data, Mapping) else None
    if not isinstance(layers, list):
        raise ValueError("engine information has no 'Layers' list; is it the inspector's JSON output?")
    original = _Original.describe(original_model) if original_model is not None else None
    kernels: list[Kernel] = []
    names_only = 0
    for layer in layers:
        if isinstance(layer, str):
            kernels.append(_kernel_from_layer_name(layer, original, precision))
            names_only += 1
        elif isinstance(layer, Mapping):
            kernels.append(_kernel_from_layer(layer, original, precision))
        else:
            raise ValueError(f"engine layer entries must be names or objects, not {type(layer).__name__}")
    if names_only:
        logger.warning("%d of %d engine layers have names only (build with ProfilingVerbosity.DETAILED "
                       "for shapes); their keys cannot match a measurement table", names_only, len(layers))
    return kernels


def time_until_stable(run_once: Callable[[], float], protocol: MeasureProtocol) -> list[float]:
    """Warm up, then call `run_once` (returns ms) until the median is stable or a cap is hit; the samples."""
    for _ in range(protocol.warmup_runs):
        run_once()
    samples: list[float] = []
    deadline = time.perf_counter() + protocol.max_seconds
    while len(samples) < protocol.max_repeats:
        samples.append(float(run_once()))
        if len(samples) >= protocol.min_repeats and (
            median_is_stable(samples, protocol.stable_within) or time.perf_counter() > deadline
        ):
            break
    return samples


def kernel_timings_from_layer_times(
    kernels: Iterable[Kernel], layer_times_ms: Mapping[str, list[float]]
) -> list[KernelTiming]:
    """Match the IProfiler's per-layer samples (ms, by layer name) to the kernels.

    Kernels the profiler never reported (TensorRT elides some no-op layers at run time) and reported
    layers without a kernel are logged, never dropped silently.
    """
    timings: list[KernelTiming] = []
    kernel_names: set[str] = set()
    for kernel in kernels:
        kernel_names.add(kernel.runtime_node)
        samples = layer_times_ms.get(kernel.runtime_node)
        if not samples:
            logger.warning("no profiler times for TensorRT layer %s (%s)", kernel.name, kernel.op_type)
            continue
        timings.append(KernelTiming(kernel=kernel, timing=summarize_ms(samples)))
    unmatched = sorted(set(layer_times_ms) - kernel_names)
    if unmatched:
        logger.warning("profiler reported %d layers the inspector did not list: %s", len(unmatched),
                       ", ".join(unmatched[:5]))
    return timings


def _import_tensorrt() -> Any:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise BackendUnavailableError(INSTALL_HINT) from exc


def _import_cudart() -> Any:
    """cuda-python's runtime API: `cuda.bindings.runtime` (>= 12.6), else the older `cuda.cudart`."""
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise BackendUnavailableError("cuda-python is not installed: pip install '.[tensorrt]'")


def _cuda_call(cudart: Any, result: Any) -> Any:
    """Unpack a cuda-python call's (error, *values) tuple, raising on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA runtime error: {err}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


class _LayerTimeProfiler:
    """Collects IProfiler reports: per layer name, one sample (ms) per profiled inference."""

    def __init__(self, trt: Any) -> None:
        profiler = self

        class _Profiler(trt.IProfiler):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                profiler.current[layer_name] += float(ms)

        self.trt_profiler = _Profiler()
        self.current: defaultdict[str, float] = defaultdict(float)
        self.samples: defaultdict[str, list[float]] = defaultdict(list)

    def end_run(self, keep: bool) -> float:
        """Close one inference's reports; returns their sum (ms) as the run's profiled time."""
        total = sum(self.current.values())
        if keep:
            for name, ms in self.current.items():
                self.samples[name].append(ms)
        self.current.clear()
        return total


@dataclass
class _BuiltEngine:
    engine: Any
    runtime: Any  # keeps the deserializing runtime alive as long as its engine
    info: str
    model: onnx.ModelProto


class TensorRTBackend:
    """TensorRT on one CUDA GPU with a fixed builder precision (and optional 2:4 sparse tactics)."""

    name = "tensorrt"
    _CACHED_ENGINES = 2

    def __init__(self, precision: str = "fp16", sparse_weights: bool = False, workspace_mb: int = 1024) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self._trt = _import_tensorrt()
        self._cudart = _import_cudart()
        try:
            count = _cuda_call(self._cudart, self._cudart.cudaGetDeviceCount())
        except RuntimeError as exc:
            raise BackendUnavailableError(f"no CUDA device: {exc}") from exc
        if not count:
            raise BackendUnavailableError("no CUDA device: cudaGetDeviceCount found none")
        self.precision = precision
        self.sparse_weights = sparse_weights
        self.workspace_mb = workspace_mb
        self._engines: BoundedMemo[str, _BuiltEngine] = BoundedMemo(self._CACHED_ENGINES, lru=True)

    def runtime(self) -> RuntimeSpec:
        suffix = "-sparse" if self.sparse_weights else ""
        return RuntimeSpec(
            backend="tensorrt",
            execution_provider=f"TensorRT-{self.precision}{suffix}",
            threads=1,
            runtime_version=str(self._trt.__version__),
        )

    def extract_kernels(self, model: onnx.ModelProto) -> list[Kernel]:
        built = self._build(model)
        return kernels_from_engine_info(built.info, built.model, precision=self.precision)

    def measure_model(self, model: onnx.ModelProto, protocol: MeasureProtocol, paired: bool | None = None,
                      reference: str | None = None) -> Timing:
        # A GPU timed by CUDA events does not pair runs with a reference kernel: Timing.reference_ms stays None.
        del paired, reference
        built = self._build(model)
        cudart = self._cudart
        with _Execution(self._trt, cudart, built.engine) as execution:
            start = _cuda_call(cudart, cudart.cudaEventCreate())
            end = _cuda_call(cudart, cudart.cudaEventCreate())
            try:
                def run_once() -> float:
                    _cuda_call(cudart, cudart.cudaEventRecord(start, execution.stream))
                    execution.enqueue()
                    _cuda_call(cudart, cudart.cudaEventRecord(end, execution.stream))
                    _cuda_call(cudart, cudart.cudaEventSynchronize(end))
                    return float(_cuda_call(cudart, cudart.cudaEventElapsedTime(start, end)))

                samples = time_until_stable(run_once, protocol)
            finally:
                cudart.cudaEventDestroy(start)
                cudart.cudaEventDestroy(end)
        return summarize_ms(samples)

    def measure_kernels(self, model: onnx.ModelProto, protocol: MeasureProtocol,
                        wall: Timing | None = None) -> list[KernelTiming]:
        """Per-layer times from TensorRT's IProfiler (a context of its own: profiling synchronizes per layer)."""
        built = self._build(model)
        kernels = kernels_from_engine_info(built.info, built.model, precision=self.precision)
        profiler = _LayerTimeProfiler(self._trt)
        warmup_left = protocol.warmup_runs
        with _Execution(self._trt, self._cudart, built.engine, profiler=profiler.trt_profiler) as execution:
            def run_once() -> float:
                nonlocal warmup_left
                execution.enqueue()
                execution.synchronize()
                keep = warmup_left <= 0
                warmup_left -= 1
                return profiler.end_run(keep=keep)

            time_until_stable(run_once, protocol)
        return kernel_timings_from_layer_times(kernels, profiler.samples)

    def _build(self, model: onnx.ModelProto) -> _BuiltEngine:
        """Build (or reuse) the engine for a model; layer names follow its (uniquely named) nodes."""
        named = onnx.ModelProto()
        named.CopyFrom(model)
        name_unnamed_nodes(named)
        payload = named.SerializeToString()
        digest = hashlib.sha256(payload).hexdigest()
        cached = self._engines.lookup(digest)
        if cached is not None:
            return cached
        trt = self._trt
        trt_logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(trt_logger)
        network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
        parser = trt.OnnxParser(network, trt_logger)
        if not parser.parse(payload):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InvalidModelError(f"TensorRT cannot parse this model: {errors[:300]}")
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            if any(int(d) < 0 for d in tensor.shape):
                raise InvalidModelError(f"input {tensor.name} has dynamic shape {tuple(tensor.shape)}; fix it first")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_mb << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if self.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        if self.precision == "int8":
            # Explicit quantization: int8 where the model's Q/DQ nodes give scales, fp16 elsewhere.
            config.set_flag(trt.BuilderFlag.INT8)
            if not _has_qdq_layers(trt, network):
                logger.warning("int8 engine for a model without Q/DQ nodes: its layers will run in fp16")
        if self.sparse_weights:
            config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise InvalidModelError("TensorRT could not build an engine for this model (see its log)")
        runtime = trt.Runtime(trt_logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        if engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine it just built")
        inspector = engine.create_engine_inspector()
        info = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
        built = _BuiltEngine(engine=engine, runtime=runtime, info=info, model=named)
        self._engines.put(digest, built)
        logger.debug("built TensorRT %s engine with %d layers", self.precision, engine.num_layers)
        return built


def _has_qdq_layers(trt: Any, network: Any) -> bool:
    qdq = {trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE}
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


class _Execution:
    """An execution context with device buffers (random inputs) and a stream; freed on exit."""

    def __init__(self, trt: Any, cudart: Any, engine: Any, profiler: Any = None) -> None:
        self._trt, self._cudart, self._engine, self._profiler = trt, cudart, engine, profiler
        self._buffers: list[int] = []
        self.stream: Any = None
        self.context: Any = None

    def __enter__(self) -> _Execution:
        trt, cudart, engine = self._trt, self._cudart, self._engine
        try:
            self.stream = _cuda_call(cudart, cudart.cudaStreamCreate())
            self.context = engine.create_execution_context()
            if self.context is None:
                raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
            if self._profiler is not None:
                self.context.profiler = self._profiler
            rng = np.random.default_rng(0)
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                shape = tuple(engine.get_tensor_shape(name))
                dtype = engine.get_tensor_dtype(name)
                nbytes = max(int(np.prod(shape)) * int(dtype.itemsize), 1)
                pointer = _cuda_call(cudart, cudart.cudaMalloc(nbytes))
                self._buffers.append(pointer)
                self._fill(pointer, shape, dtype, nbytes, engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT, rng)
                self.context.set_tensor_address(name, int(pointer))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _fill(self, pointer: int, shape: tuple[int, ...], dtype: Any, nbytes: int, is_input: bool,
              rng: np.random.Generator) -> None:
        cudart = self._cudart
        try:
            found = self._trt.nptype(dtype)
        except (TypeError, KeyError):  # bf16, fp8, int4 have no numpy type
            found = None
        np_type = np.dtype(found) if found is not None else None
        if not is_input or np_type is None or not np.issubdtype(np_type, np.floating):
            # Zeros are valid for every input type, including indices.
            _cuda_call(cudart, cudart.cudaMemset(pointer, 0, nbytes))
            return
        host = np.ascontiguousarray(rng.standard_normal(shape).astype(np_type))
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _cuda_call(cudart, cudart.cudaMemcpy(pointer, host.ctypes.data, host.nbytes, kind))

    def enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see its log)")

    def synchronize(self) -> None:
        _cuda_call(self._cudart, self._cudart.cudaStreamSynchronize(self.stream))

    def __exit__(self, *exc: object) -> None:
        cudart = self._cudart
        if self.stream is not None:
            cudart.cudaStreamSynchronize(self.stream)
        self.context = None
        for pointer in self._buffers:
            cudart.cudaFree(pointer)
        self._buffers.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
