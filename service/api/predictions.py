"""Per-process caches behind predict and rank: prepared models and device predictors.

A repeated question rebuilds nothing: the PreparedModel (fixed shapes, kernels per config) is kept per
(model id, runtime, input shapes) and the DevicePredictor (table, regressors, overhead) per device.

A cached predictor is checked against its device's version in the store before every use (one indexed row:
devices.table_seq and state_version, raised by every write a predictor depends on, from any process). When it
changed, the predictor takes in what changed (DevicePredictor.updated: new measured kernels merged, runs and
regressors read again) in a background thread; the question waits at most `refresh_wait_s` for it and is
otherwise answered by the current predictor. An upload never makes a question wait for a reload, and no process
answers from a predictor older than the store for longer than one refresh.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from predictor.compression.config import CompressionConfig
from predictor.errors import NoMeasurementsError, UnknownDeviceError
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel, predict_config, rank_candidates
from predictor.memo import BoundedMemo
from predictor.model.graph import load_model
from predictor.runtime.optimizer import RuntimeSpec
from predictor.store import get_device, get_stored_model, read_table_version
from service.api.model_store import ModelNotFoundError, ModelStore
from service.api.schemas import PredictRequest, RankRequest
from service.context import Store

__all__ = ["ModelNotFoundError", "PredictionCache", "answer_question"]

logger = logging.getLogger(__name__)

ShapesKey = tuple[tuple[str, tuple[int, ...]], ...]
# Threads taking in changes of cached predictors (one refresh per device at a time).
_REFRESH_THREADS = 2


@dataclass(frozen=True)
class _LoadedDevice:
    runtime: RuntimeSpec
    predictor: DevicePredictor


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

    def __init__(self, model_store: ModelStore, max_models: int = 32, max_devices: int = 256,
                 refresh_wait_s: float = 0.5) -> None:
        self.model_store = model_store
        self.refresh_wait_s = refresh_wait_s
        self._prepared: BoundedMemo[tuple[str, RuntimeSpec, ShapesKey | None], PreparedModel] = (
            BoundedMemo(max_models, lru=True)
        )
        self._devices: BoundedMemo[str, _LoadedDevice] = BoundedMemo(max_devices, lru=True)
        self._refreshing: dict[str, Future[_LoadedDevice]] = {}
        self._refresh_lock = threading.Lock()
        self._refresher = ThreadPoolExecutor(max_workers=_REFRESH_THREADS, thread_name_prefix="latpred-refresh")

    def device_predictor(self, store: Store, device_name: str) -> tuple[RuntimeSpec, DevicePredictor]:
        """The device's runtime and predictor, current with the store; raises UnknownDeviceError or
        NoMeasurementsError."""
        # A connection, not an ORM session: this runs before every answer.
        with store.engine.connect() as connection:
            version = read_table_version(connection, device_name)
        if version is None:
            with store.sessions() as session:
                get_device(session, device_name)  # raises UnknownDeviceError naming the known devices
            raise UnknownDeviceError(f"unknown device {device_name!r}")
        loaded = self._devices.lookup(device_name)
        known = None if loaded is None else loaded.predictor.version
        if loaded is None or known is None or ((known.device_id, known.registered_at)
                                               != (version.device_id, version.registered_at)):
            # Nothing to answer with meanwhile: the first load is waited for (once, however many ask).
            self._devices.discard(device_name)
            loaded = self._devices.get_or_compute(device_name, lambda: self._load_device(store, device_name))
            return loaded.runtime, loaded.predictor
        if loaded.predictor.version == version:
            return loaded.runtime, loaded.predictor
        refresh = self._refresh(store, device_name, loaded)
        try:
            loaded = refresh.result(timeout=self.refresh_wait_s)
        except FutureTimeout:
            logger.debug("device %r: answering with its current predictor while the new one is built", device_name)
        except Exception as exc:  # the store went away meanwhile, say: the current predictor still answers
            logger.warning("device %r: could not take in the store's changes, answering with the current predictor: "
                           "%s", device_name, exc)
        return loaded.runtime, loaded.predictor

    def _refresh(self, store: Store, device_name: str, loaded: _LoadedDevice) -> Future[_LoadedDevice]:
        """The device's refresh in flight, or a new one started from `loaded`."""
        with self._refresh_lock:
            running = self._refreshing.get(device_name)
            if running is not None:
                return running
            future = self._refresher.submit(self._refreshed, store, device_name, loaded)
            self._refreshing[device_name] = future
        return future

    def _refreshed(self, store: Store, device_name: str, loaded: _LoadedDevice) -> _LoadedDevice:
        try:
            started = time.perf_counter()
            with store.sessions() as session:
                device = get_device(session, device_name)
                predictor = loaded.predictor.updated(session, device)
                runtime = predictor.runtime or device.runtime
            fresh = _LoadedDevice(runtime=runtime, predictor=predictor)
            self._devices.put(device_name, fresh)
            logger.info("device %r: predictor brought up to date in %.2f s (%d table entries)", device_name,
                        time.perf_counter() - started, predictor.measurement_count)
            return fresh
        finally:
            with self._refresh_lock:
                self._refreshing.pop(device_name, None)

    def _load_device(self, store: Store, device_name: str) -> _LoadedDevice:
        started = time.perf_counter()
        with store.sessions() as session:
            device = get_device(session, device_name)
            predictor = DevicePredictor.load(session, device)
            # The device's kernels as this host builds them (predictor.runtime.devices), not this host's own.
            runtime = predictor.runtime or device.runtime
        if predictor.measurement_count == 0:
            # Not cached: the first upload (from any process) must be seen at once.
            raise NoMeasurementsError(
                f"device {device_name!r} has no measurements to predict from: profile it first "
                f"(`latpred profile --device {device_name}` or POST /api/v1/devices/{device_name}/measurements)"
            )
        logger.info("loaded predictor of device %r (%d table entries) in %.2f s", device_name,
                    predictor.measurement_count, time.perf_counter() - started)
        return _LoadedDevice(runtime=runtime, predictor=predictor)

    def close(self) -> None:
        """Stop taking refreshes (one running finishes in its thread)."""
        self._refresher.shutdown(wait=False, cancel_futures=True)

    def prepared_model(self, store: Store, model_id: str, runtime: RuntimeSpec,
                       input_shapes: Mapping[str, list[int]] | None = None) -> PreparedModel:
        """The uploaded model prepared for the runtime; raises ModelNotFoundError or InvalidModelError."""
        key = (model_id, runtime, _shapes_key(input_shapes))
        return self._prepared.get_or_compute(key, lambda: self._prepare(store, model_id, runtime, input_shapes))

    def _prepare(self, store: Store, model_id: str, runtime: RuntimeSpec,
                 input_shapes: Mapping[str, list[int]] | None) -> PreparedModel:
        with store.sessions() as session:
            stored = get_stored_model(session, model_id)
            if stored is None:
                raise ModelNotFoundError(f"unknown model id {model_id!r}; upload it with POST /api/v1/models")
            stored_inputs = stored.inputs
            data = self.model_store.read(session, model_id)
        if data is None:
            raise ModelNotFoundError(f"the bytes of model {model_id!r} are missing; upload it again")
        shapes = dict(input_shapes) if input_shapes is not None else _fixed_inputs(stored_inputs)
        started = time.perf_counter()
        prepared = PreparedModel.create(load_model(data), runtime, shapes, model_id=model_id)
        logger.info("prepared model %s for %s %s in %.2f s", model_id[:12], runtime.backend,
                    runtime.execution_provider, time.perf_counter() - started)
        return prepared


def _predict(body: PredictRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    config = body.config or CompressionConfig()  # checked by the request's schema (parse_config)
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    estimate = predict_config(predictor, prepared, config)
    return {**estimate.to_dict(), "model_id": body.model_id, "config": config.model_dump(exclude_none=True)}


def _rank(body: RankRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    candidates = [(candidate.name, candidate.config) for candidate in body.candidates]
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    # Fresh configs are answered at the kernel level: no quantizer run or runtime session per candidate.
    ranking = rank_candidates(predictor, prepared, candidates, body.target_speedup, fast=True)
    return {**ranking, "model_id": body.model_id}


def answer_question(kind: str, body: Mapping[str, Any], store: Store, cache: PredictionCache) -> dict[str, Any]:
    """The answer of POST /api/v1/predict ("predict") or /api/v1/rank ("rank") to a request body, as JSON values."""
    if kind == "predict":
        return _predict(PredictRequest.model_validate(body), store, cache)
    if kind == "rank":
        return _rank(RankRequest.model_validate(body), store, cache)
    raise ValueError(f"unknown kind of question {kind!r}")
