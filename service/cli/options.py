"""Options several commands share: their names, help, choices and the environment variables standing in for them."""
from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "DEVICE_ENV",
    "TOKEN_ENV",
    "URL_ENV",
    "Backend",
    "ConfigOpt",
    "DeviceOpt",
    "ExecutionProvider",
    "InputShapeOpt",
    "JsonOpt",
    "TokenOpt",
]

DEVICE_ENV = "LATPRED_DEVICE"
TOKEN_ENV = "LATPRED_TOKEN"
URL_ENV = "LATPRED_URL"


class Backend(StrEnum):
    """The profiler backends (profiler.backends)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


class ExecutionProvider(StrEnum):
    """onnxruntime's execution providers that run a model on this host's hardware (its browser and remote ones
    left out); whether this host's onnxruntime has one is checked when the backend is made."""

    CPU = "CPUExecutionProvider"
    CUDA = "CUDAExecutionProvider"
    TENSORRT = "TensorrtExecutionProvider"
    OPENVINO = "OpenVINOExecutionProvider"
    DNNL = "DnnlExecutionProvider"
    MIGRAPHX = "MIGraphXExecutionProvider"
    QNN = "QNNExecutionProvider"
    COREML = "CoreMLExecutionProvider"
    DIRECTML = "DmlExecutionProvider"
    NNAPI = "NnapiExecutionProvider"
    XNNPACK = "XnnpackExecutionProvider"
    CANN = "CANNExecutionProvider"
    VITISAI = "VitisAIExecutionProvider"
    RKNPU = "RknpuExecutionProvider"
    VSINPU = "VSINPUExecutionProvider"


DeviceOpt = Annotated[str, typer.Option("--device", "-d", envvar=DEVICE_ENV,
                                        help="device name (see `latpred devices`)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout and nothing else")]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="fix a symbolic input: NAME=1x3x224x224 (repeatable)"),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="compression config JSON file")]
TokenOpt = Annotated[str | None, typer.Option(
    envvar=TOKEN_ENV, help="bearer token for the service (prefer the variable: an argument shows in `ps`)")]
