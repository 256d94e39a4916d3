"""Per-process caches behind predict and rank: prepared models and device predictors.

A repeated question rebuilds nothing: the PreparedModel (fixed shapes, kernels per config) is kept per
(model id, runtime, input shapes) and the DevicePredictor (table, regressors, overhead) per device.
A device's predictor is dropped when this process sees new measurements, retrained regressors, a finished
run or a re-registration, and in any case after `predictor_ttl_s` (other workers and the CLI write too).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from predictor.config import parse_config
from predictor.errors import NoMeasurementsError
from predictor.estimate import DevicePredictor
from predictor.graph import load_model
from predictor.prepared import PreparedModel, predict_config, rank_candidates
from predictor.runtime import RuntimeSpec
from predictor.store import get_device, get_stored_model
from service.api.schemas import PredictRequest, RankRequest
from service.context import Store

__all__ = ["ModelNotFoundError", "PredictionCache", "answer_question", "model_path"]

logger = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

ShapesKey = tuple[tuple[str, tuple[int, ...]], ...]


class ModelNotFoundError(LookupError):
    """No uploaded model with that id (or its file is gone)."""


def model_path(models_dir: Path, model_id: str) -> Path:
    """Where the bytes of an uploaded model live; only ever named by the sha256 id (checked here)."""
    if not _SHA256_HEX.fullmatch(model_id):
        raise ModelNotFoundError(f"unknown model id {model_id!r}: ids are sha256 hex digests")
    return models_dir / f"{model_id}.onnx"

class _BuildOnceLru(Generic[K, V]):
    """A bounded LRU map whose missing values are built once even under concurrent requests."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self._building: dict[K, threading.Lock] = {}

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def get_or_build(self, key: K, build: Callable[[], V]) -> V:
        value = self.get(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._building.setdefault(key, threading.Lock())
        try:
            with key_lock:
                value = self.get(key)
                if value is None:
                    value = build()
                    self.put(key, value)
        finally:
            with self._lock:
                self._building.pop(key, None)
        return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def pop(self, key: K) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass(frozen=True)
class _LoadedDevice:
    runtime: RuntimeSpec
    predictor: DevicePredictor
    loaded_at: float


def _shapes_key(input_shapes: Mapping[str, list[int]] | None) -> ShapesKey | None:
    if input_shapes is None:
        return None
    return tuple(sorted((name, tuple(int(d) for d in dims)) for name, dims in input_shapes.items()))


def _fixed_inputs(inputs: object) -> dict[str, list[int]] | None:
    """The stored inputs as input shapes, if every dim is a number (they were fixed at upload)."""
    if not isinstance(inputs, dict):
        return None
    shapes: dict[str, list[int]] = {}
    for name, dims in inputs.items():
        if not isinstance(dims, list) or not all(isinstance(d, int) and d > 0 for d in dims):
            return None
        shapes[str(name)] = list(dims)
    return shapes


class PredictionCache:
    """Prepared models and device predictors of this process (see the module docstring)."""

    def __init__(self, models_dir: Path, predictor_ttl_s: float = 300.0, max_models: int = 32,
                 max_devices: int = 256, predictor_refresh_s: float = 5.0) -> None:
        self.models_dir = models_dir
        self.predictor_ttl_s = predictor_ttl_s
        # New measurements make a device's predictor stale; it is reloaded at most this often, so agents
        # uploading all the time do not make every prediction reload the whole table.
        self.predictor_refresh_s = predictor_refresh_s
        self._stale: set[str] = set()
        self._prepared: _BuildOnceLru[tuple[str, RuntimeSpec, ShapesKey | None], PreparedModel] = (
            _BuildOnceLru(max_models)
        )
        self._devices: _BuildOnceLru[str, _LoadedDevice] = _BuildOnceLru(max_devices)
        self._generations: dict[str, int] = {}
        self._generations_lock = threading.Lock()

    def model_path(self, model_id: str) -> Path:
        return model_path(self.models_dir, model_id)

    def device_predictor(self, store: Store, device_name: str) -> tuple[RuntimeSpec, DevicePredictor]:
        """The device's runtime and predictor; raises UnknownDeviceError or NoMeasurementsError."""
        loaded = self._devices.get(device_name)
        if loaded is not None:
            age = time.monotonic() - loaded.loaded_at
            fresh = device_name not in self._stale or age < self.predictor_refresh_s
            if fresh and age <= self.predictor_ttl_s:
                return loaded.runtime, loaded.predictor
        self._stale.discard(device_name)
        self._devices.pop(device_name)
        generation = self._generations.get(device_name, 0)
        loaded = self._devices.get_or_build(device_name, lambda: self._load_device(store, device_name))
        if self._generations.get(device_name, 0) != generation:
            # Invalidated while loading: answer this request, but do not keep what may predate the write.
            self._devices.pop(device_name)
        return loaded.runtime, loaded.predictor

    def _load_device(self, store: Store, device_name: str) -> _LoadedDevice:
        with store.sessions() as session:
            device = get_device(session, device_name)
            predictor = DevicePredictor.load(session, device)
            # The device's kernels as this host builds them (predictor.devices), not this host's own.
            runtime = predictor.runtime or device.runtime
        if predictor.measurement_count == 0:
            # Not cached: the first upload (from any process) must be seen at once.
            raise NoMeasurementsError(
                f"device {device_name!r} has no measurements to predict from: profile it first "
                f"(`latpred profile --device {device_name}` or POST /api/devices/{device_name}/measurements)"
            )
        logger.info("loaded predictor of device %r (%d table entries)", device_name, predictor.measurement_count)
        return _LoadedDevice(runtime=runtime, predictor=predictor, loaded_at=time.monotonic())

    def mark_stale(self, device_name: str) -> None:
        """The device's table grew: reload its predictor once it is `predictor_refresh_s` old."""
        self._stale.add(device_name)

    def invalidate_device(self, device_name: str) -> None:
        """Forget the device's predictor; the next question reloads it from the store."""
        with self._generations_lock:
            self._generations[device_name] = self._generations.get(device_name, 0) + 1
        self._devices.pop(device_name)

    def prepared_model(self, store: Store, model_id: str, runtime: RuntimeSpec,
                       input_shapes: Mapping[str, list[int]] | None = None) -> PreparedModel:
        """The uploaded model prepared for the runtime; raises ModelNotFoundError or InvalidModelError."""
        self.model_path(model_id)
        key = (model_id, runtime, _shapes_key(input_shapes))
        return self._prepared.get_or_build(key, lambda: self._prepare(store, model_id, runtime, input_shapes))

    def _prepare(self, store: Store, model_id: str, runtime: RuntimeSpec,
                 input_shapes: Mapping[str, list[int]] | None) -> PreparedModel:
        with store.sessions() as session:
            stored = get_stored_model(session, model_id)
            stored_inputs = None if stored is None else stored.inputs
        if stored is None:
            raise ModelNotFoundError(f"unknown model id {model_id!r}; upload it with POST /api/models")
        path = self.model_path(model_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ModelNotFoundError(f"the file of model {model_id!r} is missing; upload it again") from exc
        shapes = dict(input_shapes) if input_shapes is not None else _fixed_inputs(stored_inputs)
        started = time.perf_counter()
        prepared = PreparedModel.create(load_model(data), runtime, shapes, model_id=model_id)
        logger.info("prepared model %s for %s %s in %.2f s", model_id[:12], runtime.backend,
                    runtime.execution_provider, time.perf_counter() - started)
        return prepared


def _predict(body: PredictRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    config = parse_config(body.config)
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    estimate = predict_config(predictor, prepared, config)
    return {**estimate.to_dict(), "model_id": body.model_id, "config": config.model_dump(exclude_none=True)}


def _rank(body: RankRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    candidates = [(candidate.name, parse_config(candidate.config)) for candidate in body.candidates]
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    # Fresh configs are answered at the kernel level: no quantizer run or runtime session per candidate.
    ranking = rank_candidates(predictor, prepared, candidates, body.target_speedup, fast=True)
    return {**ranking, "model_id": body.model_id}


def answer_question(kind: str, body: Mapping[str, Any], store: Store, cache: PredictionCache) -> dict[str, Any]:
    """The answer of POST /api/predict ("predict") or /api/rank ("rank") to a request body, as JSON values."""
    if kind == "predict":
        return _predict(PredictRequest.model_validate(body), store, cache)
    if kind == "rank":
        return _rank(RankRequest.model_validate(body), store, cache)
    raise ValueError(f"unknown kind of question {kind!r}")
