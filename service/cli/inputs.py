"""What the commands read: settings, the store, devices and their predictors, models, configs and candidates."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NoReturn

import onnx
from pydantic import ValidationError
from sqlalchemy.orm import Session

from predictor.compression.config import CompressionConfig, load_config, parse_config
from predictor.errors import ConfigError, LatpredError, NoMeasurementsError
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel
from predictor.model.graph import load_model, parse_input_shapes, set_input_shapes
from predictor.runtime.devices import DeviceKernels, kernels_for_device
from predictor.runtime.optimizer import local_runtime
from predictor.store import Device, Store, count_measurements_by_op, get_device, open_store
from profiler.backends.base import Backend as ProfilerBackend
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.backends.tensorrt import TensorRTBackend
from service.cli.options import Backend
from service.settings import Settings

__all__ = [
    "InputError",
    "fail",
    "load_candidates",
    "load_settings",
    "local_backend",
    "make_backend",
    "open_cli_store",
    "parse_candidates",
    "load_predictor",
    "prepare_on_device",
    "read_config",
    "read_model",
    "require_measurements",
    "device_kernels",
]


class InputError(LatpredError):
    """Bad input that the CLI itself finds: an option combination, an argument, a setting."""


def fail(message: str) -> NoReturn:
    raise InputError(message)


def load_settings() -> Settings:
    """The LATPRED_* settings of this run (read afresh: one process may run several commands, as tests do)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"LATPRED_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
                             for error in exc.errors())
        raise InputError(f"bad setting: {problems}") from exc


def open_cli_store() -> Store:
    """The store the settings name, migrated to head."""
    return open_store(load_settings())


def read_config(path: Path | None) -> CompressionConfig:
    """The config in a JSON file, or no compression."""
    return load_config(path) if path else CompressionConfig()


def read_model(path: Path, input_shape: list[str] | None = None) -> onnx.ModelProto:
    """The model in the file with `--input-shape` arguments applied."""
    return set_input_shapes(load_model(path), parse_input_shapes(input_shape or []))


def load_candidates(path: Path) -> list[tuple[str, Any]]:
    """Named candidate configs, still unparsed: a JSON list of {"name", "config"} or an object name -> config.

    A file that is not such a list fails as a whole (ConfigError); each candidate's config is parsed by its user,
    so that one bad candidate can be named and the others used.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(data, dict) and "candidates" in data:
        data = data["candidates"]
    if isinstance(data, dict):
        data = [{"name": name, "config": config} for name, config in data.items()]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of {{\"name\", \"config\"}} candidates")
    candidates: list[tuple[str, Any]] = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{path}: candidate {index} needs a \"name\" and a \"config\"")
        candidates.append((str(entry["name"]), entry.get("config") or {}))
    return candidates


def parse_candidates(path: Path) -> list[tuple[str, CompressionConfig]]:
    """`load_candidates` with every config parsed: the first bad one fails them all, naming its candidate."""
    parsed = []
    for name, raw in load_candidates(path):
        try:
            parsed.append((name, parse_config(raw)))
        except ConfigError as exc:
            raise ConfigError(f"{path}: candidate {name!r}: {exc}") from exc
    return parsed


def device_kernels(device: Device) -> DeviceKernels:
    """How this host builds the device's kernels (predictor.runtime.devices)."""
    return kernels_for_device(device.name, device.runtime, device.kernel_profile,
                              local_runtime(device.threads, device.execution_provider))


def require_measurements(session: Session, device: Device) -> None:
    """NoMeasurementsError while the device's table is empty."""
    if not count_measurements_by_op(session, device):
        raise NoMeasurementsError.for_device(device.name)


def load_predictor(session: Session, device: Device) -> DevicePredictor:
    """The device's predictor; NoMeasurementsError while its table is empty."""
    require_measurements(session, device)
    return DevicePredictor.load(session, device)


def prepare_on_device(model: Path, device: str, input_shape: list[str] | None
                      ) -> tuple[PreparedModel, DevicePredictor | None]:
    """The model prepared on the device's runtime, and the device's predictor (None: no table yet)."""
    onnx_model = load_model(model)
    shapes = parse_input_shapes(input_shape or [])
    store = open_cli_store()
    with store.sessions() as session:
        dev = get_device(session, device)
        predictor = DevicePredictor.load(session, dev) if count_measurements_by_op(session, dev) else None
        runtime = predictor.runtime if predictor is not None and predictor.runtime else device_kernels(dev).runtime
    return PreparedModel.create(onnx_model, runtime, shapes), predictor


def make_backend(backend: Backend, threads: int, execution_provider: str) -> ProfilerBackend:
    """The profiler backend of that kind on this host (BackendUnavailableError says why not)."""
    if backend is Backend.ONNXRUNTIME:
        return OnnxRuntimeBackend(threads=threads, execution_provider=execution_provider)
    if execution_provider != "CPUExecutionProvider":
        fail(f"--execution-provider is an onnxruntime option; the {backend.value} backend has none")
    return TensorRTBackend()


def local_backend(device: Device) -> OnnxRuntimeBackend:
    """The backend that measures `device` on this host; refuses devices of another host or runtime."""
    if device.backend != "onnxruntime":
        fail(f"device {device.name} uses {device.backend}; this host measures onnxruntime devices only")
    backend = OnnxRuntimeBackend(threads=device.threads, execution_provider=device.execution_provider)
    local = backend.runtime()
    if local.runtime_version != device.runtime_version:
        fail(f"device {device.name} runs onnxruntime {device.runtime_version}, this host has "
             f"{local.runtime_version}: measure on the device itself")
    return backend
