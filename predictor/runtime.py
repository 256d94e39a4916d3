"""What a device runs models with, and onnxruntime's own graph optimizer as the source of truth for fusion."""
from __future__ import annotations

import logging
import os
import platform
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from predictor.errors import InvalidModelError

__all__ = ["RuntimeSpec", "describe_host", "local_runtime", "optimize_model"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimeSpec:
    """The runtime half of a device: backend, its version, execution provider and thread setting."""

    backend: str = "onnxruntime"
    execution_provider: str = "CPUExecutionProvider"
    threads: int = 1
    runtime_version: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def local_runtime(threads: int = 1, execution_provider: str = "CPUExecutionProvider") -> RuntimeSpec:
    """The onnxruntime installed here, with the given thread count."""
    import onnxruntime

    return RuntimeSpec(
        backend="onnxruntime",
        execution_provider=execution_provider,
        threads=threads,
        runtime_version=onnxruntime.__version__,
    )


def describe_host() -> str:
    """A one-line description of this host's CPU (model name and core count)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _session_options(runtime: RuntimeSpec):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return options


_IR_VERSION = re.compile(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)")


def translate_runtime_error(exc: Exception) -> InvalidModelError:
    """Turn an onnxruntime load failure into a one-line InvalidModelError."""
    text = str(exc)
    match = _IR_VERSION.search(text)
    if match:
        return InvalidModelError(
            f"the model's IR version {match.group(1)} is newer than this runtime supports "
            f"(max {match.group(2)}); re-export it with an older onnx or set model.ir_version"
        )
    if "opset" in text.lower():
        line = next((ln for ln in text.splitlines() if "opset" in ln.lower()), text)
        return InvalidModelError(f"the runtime cannot load this model's opset: {line.strip()[:300]}")
    last = text.strip().splitlines()[-1] if text.strip() else type(exc).__name__
    return InvalidModelError(f"the runtime cannot load this model: {last[:300]}")


def optimize_model(model: onnx.ModelProto, runtime: RuntimeSpec) -> onnx.ModelProto:
    """Run onnxruntime's graph optimizer for this runtime and return the graph it will execute.

    The optimizer decides fusion (Conv+BN+Relu, MatMul+Add, Gelu, attention), int8 QDQ folding and
    layout (NCHWc blocks, NHWC transposes); reading its output keeps latpred in step with the runtime.
    """
    import onnxruntime as ort

    if runtime.backend != "onnxruntime":
        raise InvalidModelError(f"kernel extraction for backend {runtime.backend!r} needs its own extractor")
    options = _session_options(runtime)
    with tempfile.TemporaryDirectory(prefix="latpred-opt-") as tmp:
        optimized_path = Path(tmp) / "optimized.onnx"
        options.optimized_model_filepath = str(optimized_path)
        try:
            ort.InferenceSession(
                model.SerializeToString(), options, providers=[runtime.execution_provider]
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise translate_runtime_error(exc) from exc
        return onnx.load(str(optimized_path))
