"""The Python API: `Predictor(device)` predicts and ranks on a profiled device, from the local store or through a
latpred service (`url=`), with the same typed answers (predictor.estimation.results) either way.

    from predictor import Predictor
    p = Predictor("my-device")                                   # LATPRED_DATABASE_URL / LATPRED_HOME
    p = Predictor("my-device", url="http://host:8000", token="...")
    e = p.predict("model.onnx", {"default": {"bits": 8}})         # e.latency_ms, e.interval_ms, e.kernels
    ranked = p.rank("model.onnx", {"int8": {...}, "p30": {...}})  # fastest first: .name, .latency_ms, .speedup

Locally the answers are those of `latpred predict` / `latpred rank` (predictor.estimation.prepared.predict_config and
rank_candidates on the device's DevicePredictor); remotely those of POST /api/predict and /api/rank.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import onnx
from sqlalchemy import make_url

from predictor.client import LatpredClient
from predictor.compression.config import CompressionConfig, load_config, parse_config
from predictor.errors import (
    ConfigError,
    InvalidModelError,
    LatpredError,
    NoMeasurementsError,
    ServiceHTTPError,
    UnknownDeviceError,
    UnsupportedKernelError,
)
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel, model_id_of, predict_config, rank_candidates
from predictor.estimation.results import Estimate, Ranking
from predictor.memo import BoundedMemo
from predictor.model.graph import load_model
from predictor.runtime.devices import UnreproducibleKernelsError
from predictor.runtime.optimizer import RuntimeSpec
from predictor.settings import StoreSettings
from predictor.store import Store, get_device, open_store

__all__ = ["Candidates", "ConfigSource", "ModelSource", "Predictor"]

logger = logging.getLogger(__name__)

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto
ConfigSource = Mapping[str, Any] | str | os.PathLike[str] | CompressionConfig | None
Candidates = Mapping[str, ConfigSource] | Iterable[tuple[str, ConfigSource]]
InputShapes = Mapping[str, Sequence[int]]

# Models prepared per local Predictor (fixed shapes, kernels per config: the runtime's optimizer ran for them).
_PREPARED_MODELS = 8


def _loaded_model(model: ModelSource) -> tuple[onnx.ModelProto, str]:
    """The model parsed and checked as `latpred predict` reads a file (InvalidModelError says what is wrong), and
    its content id (sha256 of the bytes it came as, external data included where the file has some)."""
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    if isinstance(model, bytes):
        return load_model(model), model_id_of(model)
    if not isinstance(model, (str, os.PathLike)):
        raise InvalidModelError(f"a model is a path, bytes or an onnx.ModelProto, not {type(model).__name__}")
    loaded = load_model(Path(model))
    return loaded, model_id_of(loaded.SerializeToString())


def _config_of(config: ConfigSource) -> CompressionConfig:
    """A CompressionConfig from a config, a JSON document (dict) or a JSON file's path; ConfigError otherwise."""
    if config is None:
        return CompressionConfig()
    if isinstance(config, CompressionConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(Path(config))
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    raise ConfigError(f"a config is a dict, a JSON file's path or a CompressionConfig, not {type(config).__name__}")


def _candidate_configs(candidates: Candidates) -> list[tuple[str, CompressionConfig]]:
    """Named configs from {name: config} or [(name, config)]; a bad one is a ConfigError naming its candidate."""
    pairs = list(candidates.items()) if isinstance(candidates, Mapping) else list(candidates)
    if not pairs:
        raise ConfigError("no candidates to rank")
    parsed = []
    for pair in pairs:
        name, config = pair
        try:
            parsed.append((str(name), _config_of(config)))
        except ConfigError as exc:
            raise ConfigError(f"candidate {name!r}: {exc}") from exc
    return parsed


def _input_shapes(input_shapes: InputShapes | None) -> dict[str, list[int]] | None:
    return None if input_shapes is None else {str(name): [int(d) for d in dims] for name, dims in input_shapes.items()}


class _Backend(Protocol):
    def predict(self, model: ModelSource, config: CompressionConfig,
                input_shapes: dict[str, list[int]] | None) -> Estimate: ...

    def rank(self, model: ModelSource, candidates: list[tuple[str, CompressionConfig]], target_speedup: float | None,
             input_shapes: dict[str, list[int]] | None, exact: bool) -> Ranking: ...

    def close(self) -> None: ...


class _LocalBackend:
    """Answers from the store: the device's predictor, brought up to date before each answer (DevicePredictor.updated
    reads what changed since it was loaded, nothing when nothing did), and the models it was asked about, prepared
    once."""

    def __init__(self, device: str, settings: StoreSettings) -> None:
        self.device = device
        self.store: Store = open_store(settings)
        try:
            with self.store.sessions() as session:
                get_device(session, device)  # UnknownDeviceError naming the devices there are
        except UnknownDeviceError as exc:
            self.store.close()
            where = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
            raise UnknownDeviceError(f"{exc} (store {where})") from exc
        self._predictor: DevicePredictor | None = None
        self._runtime: RuntimeSpec | None = None
        self._lock = threading.Lock()
        self._prepared: BoundedMemo[tuple[str, RuntimeSpec, str], PreparedModel] = BoundedMemo(_PREPARED_MODELS)

    def close(self) -> None:
        self.store.close()

    def _current(self) -> tuple[DevicePredictor, RuntimeSpec]:
        """The device's predictor as the store has it now, and the runtime setting its kernels are built with."""
        with self._lock, self.store.sessions() as session:
            device = get_device(session, self.device)
            loaded = self._predictor
            predictor = DevicePredictor.load(session, device) if loaded is None else loaded.updated(session, device)
            runtime = predictor.runtime or device.runtime
            self._predictor, self._runtime = predictor, runtime
        if predictor.measurement_count == 0:
            raise NoMeasurementsError.for_device(self.device)
        return predictor, runtime

    def _prepared_model(self, model: ModelSource, runtime: RuntimeSpec,
                        input_shapes: dict[str, list[int]] | None) -> PreparedModel:
        onnx_model, model_id = _loaded_model(model)
        key = (model_id, runtime, repr(sorted((input_shapes or {}).items())))
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = PreparedModel.create(onnx_model, runtime, input_shapes, model_id=model_id)
            self._prepared.put(key, prepared)
        return prepared

    def predict(self, model: ModelSource, config: CompressionConfig,
                input_shapes: dict[str, list[int]] | None) -> Estimate:
        predictor, runtime = self._current()
        return predict_config(predictor, self._prepared_model(model, runtime, input_shapes), config)

    def rank(self, model: ModelSource, candidates: list[tuple[str, CompressionConfig]], target_speedup: float | None,
             input_shapes: dict[str, list[int]] | None, exact: bool) -> Ranking:
        predictor, runtime = self._current()
        prepared = self._prepared_model(model, runtime, input_shapes)
        return Ranking.from_dict(rank_candidates(predictor, prepared, candidates, target_speedup, fast=not exact))


# The library error each problem code of a service's answer stands for (service.api.problems maps them back).
_ERROR_OF_CODE: dict[str, type[LatpredError]] = {
    "unknown_device": UnknownDeviceError,
    "no_measurements": NoMeasurementsError,
    "invalid_model": InvalidModelError,
    "invalid_config": ConfigError,
    "unsupported_kernel": UnsupportedKernelError,
    "unreproducible_kernels": UnreproducibleKernelsError,
}
# Where an answer has no code (a service before problem+json): what its status meant for a predict or rank question.
_ERROR_OF_STATUS: dict[int, type[LatpredError]] = {404: UnknownDeviceError, 409: NoMeasurementsError}


def _service_error(exc: ServiceHTTPError) -> LatpredError:
    """The library error a service's refusal means, with the service's message; other answers (a token refused,
    a busy service, a deadline) stay the ServiceHTTPError they are, and so does a code with no library error."""
    error = _ERROR_OF_CODE.get(exc.code) if exc.code is not None else _ERROR_OF_STATUS.get(exc.status_code)
    return exc if error is None else error(exc.detail)


class _RemoteBackend:
    """Answers from a latpred service: the model checked here as locally, uploaded once (by content), and the
    question asked of POST /api/predict or /api/rank."""

    def __init__(self, device: str, url: str, token: str | None, timeout_s: float) -> None:
        self.device = device
        self.client = LatpredClient(url, token=token, timeout_s=timeout_s)
        try:
            self.client.device(device)
        except ServiceHTTPError as exc:
            self.client.close()
            error = _service_error(exc)
            if isinstance(error, UnknownDeviceError):
                raise UnknownDeviceError(f"{exc.detail} (service {url})") from exc
            raise
        except LatpredError:
            self.client.close()
            raise

    def close(self) -> None:
        self.client.close()

    def _upload(self, model: ModelSource, input_shapes: dict[str, list[int]] | None) -> bytes:
        """The model's bytes, checked here first and on the service once (it keeps them by content)."""
        onnx_model, _ = _loaded_model(model)
        # A file's external data travels inside the upload (the service takes self-contained models only).
        data = model if isinstance(model, bytes) else onnx_model.SerializeToString()
        try:
            self.client.ensure_model(data, input_shapes)
        except ServiceHTTPError as exc:
            if exc.status_code in (413, 422):  # too large, or not a model it can read
                raise InvalidModelError(f"the service refused the model: {exc.detail}") from exc
            raise
        return data

    def predict(self, model: ModelSource, config: CompressionConfig,
                input_shapes: dict[str, list[int]] | None) -> Estimate:
        model_id = self.client.ensure_model(self._upload(model, input_shapes), input_shapes)
        try:
            document = self.client.predict(model_id, self.device, config.model_dump(mode="json", exclude_none=True),
                                           input_shapes)
        except ServiceHTTPError as exc:
            raise _service_error(exc) from exc
        return Estimate.from_dict(document)

    def rank(self, model: ModelSource, candidates: list[tuple[str, CompressionConfig]], target_speedup: float | None,
             input_shapes: dict[str, list[int]] | None, exact: bool) -> Ranking:
        if exact:
            raise LatpredError("a latpred service ranks at the kernel level (exact=False); rank with exact=True on a "
                               "local Predictor (the device's store)")
        data = self._upload(model, input_shapes)
        body = [(name, config.model_dump(mode="json", exclude_none=True)) for name, config in candidates]
        try:
            document = self.client.rank(data, body, self.device, target_speedup, input_shapes)
        except ServiceHTTPError as exc:
            raise _service_error(exc) from exc
        return Ranking.from_dict(document)


class Predictor:
    """Latency predictions for one profiled device: `predict` a model (under a compression config), `rank`
    candidate configs. Local (the store that LATPRED_DATABASE_URL / LATPRED_HOME name, or `database_url`) or
    remote (`url` of a latpred service, with its `token`); the answers are the same types either way.

    Raises UnknownDeviceError when the device is not there, ServiceUnreachable / ServiceTimeout /
    ServiceHTTPError when a service does not answer; every error is a LatpredError.
    """

    def __init__(self, device: str, *, url: str | None = None, token: str | None = None,
                 database_url: str | None = None, timeout_s: float = 60.0) -> None:
        if url is not None and database_url is not None:
            raise ValueError("give a service url or a database_url, not both")
        self.device = device
        self.url = url
        self._backend: _Backend
        if url is not None:
            self._backend = _RemoteBackend(device, url, token, timeout_s)
        else:
            settings = StoreSettings() if database_url is None else StoreSettings(database_url=database_url)
            self._backend = _LocalBackend(device, settings)

    def __repr__(self) -> str:
        where = self.url or "the local store"
        return f"Predictor({self.device!r}, {where})"

    def close(self) -> None:
        """Release the store's connections or the service's client."""
        self._backend.close()

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def predict(self, model: ModelSource, config: ConfigSource = None, *,
                input_shapes: InputShapes | None = None) -> Estimate:
        """The model's predicted latency on the device under `config` (none: as it is), per kernel and in total.

        `model`: an ONNX file's path, its bytes or an onnx.ModelProto; `config`: a dict, a JSON file's path or a
        CompressionConfig; `input_shapes` fixes symbolic inputs ({"input": [1, 3, 224, 224]}). What the config
        could not do in this model is among the estimate's warnings.
        """
        return self._backend.predict(model, _config_of(config), _input_shapes(input_shapes))

    def rank(self, model: ModelSource, candidates: Candidates, *, target_speedup: float | None = None,
             input_shapes: InputShapes | None = None, exact: bool = False) -> Ranking:
        """Candidate configs ({name: config} or [(name, config)]) ranked by predicted latency, fastest first, each
        with its speedup over the uncompressed model (`Ranking.baseline_ms`).

        `target_speedup` marks which candidates reach it (`meets_target`). Candidates' kernels come from the
        model's learned transformations, as the service ranks; `exact=True` compresses and optimizes each
        candidate for real (local only; slower).
        """
        return self._backend.rank(model, _candidate_configs(candidates), target_speedup, _input_shapes(input_shapes),
                                  exact)
