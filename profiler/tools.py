"""Compression as users' own tools apply it to their files: what the profiler measures beside latpred's configs.

latpred's configs quantize the way onnxruntime recommends (its pre-processing first). Users also run
onnxruntime's `quantize_static` straight on an export, with its defaults (int8 activations and weights, one scale
per tensor, calibrated on their data): a different graph, and for some exports very different kernels (layers
whose biases the exporter shares stay float convs between QuantizeLinear and DequantizeLinear). The profiler runs
on the device, where running a model to calibrate it is fine; random inputs calibrate it (latency does not depend
on the scales).
"""
from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx

from predictor.errors import ConfigError

__all__ = ["TOOLS", "apply_tool"]

logger = logging.getLogger(__name__)

_CALIBRATION_SAMPLES = 2


class _RandomInputs:
    """quantize_static's calibration data: a few random batches of the model's own input shapes."""

    def __init__(self, model: onnx.ModelProto, samples: int = _CALIBRATION_SAMPLES) -> None:
        rng = np.random.default_rng(0)
        initializers = {init.name for init in model.graph.initializer}
        feeds = []
        for _ in range(samples):
            feed: dict[str, np.ndarray] = {}
            for value in model.graph.input:
                if value.name in initializers:
                    continue
                dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
                if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                    feed[value.name] = rng.standard_normal(dims).astype(np.float32)
                else:  # token ids and the like: zeros are valid indices
                    dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
                    feed[value.name] = np.zeros(dims, dtype=dtype)
            feeds.append(feed)
        self._feeds = feeds
        self._iterator: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)


def quantize_static_defaults(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's `quantize_static` with its defaults, on the model as it stands (no pre-processing)."""
    from onnxruntime.quantization import quantize_static

    with tempfile.TemporaryDirectory(prefix="latpred-tool-") as tmp, _quantizer_advice_off():
        source, target = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(model, source)
        quantize_static(str(source), str(target), _RandomInputs(model))
        quantized = onnx.load(str(target))
    quantized.ir_version = model.ir_version
    return quantized


@contextmanager
def _quantizer_advice_off() -> Iterator[None]:
    """The quantizer logs advice for its user on the root logger (pre-process first, biases it cannot quantize):
    the profiler applies it as that user did, so the advice is not news to anyone reading the profile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


TOOLS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "quantize_static": quantize_static_defaults,
}


def apply_tool(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the named tool leaves it; ConfigError for an unknown tool or a tool that fails."""
    tool = TOOLS.get(name)
    if tool is None:
        raise ConfigError(f"unknown compression tool {name!r} (known: {', '.join(sorted(TOOLS))})")
    try:
        return tool(model)
    except Exception as exc:  # the quantizers raise many unrelated types
        raise ConfigError(f"{name} failed: {' '.join(str(exc).split())[:300]}") from exc
