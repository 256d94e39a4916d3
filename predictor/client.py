"""The one HTTP client of a latpred service, sync (`LatpredClient`) and async (`AsyncLatpredClient`).

httpx only: device agents (profiler.sinks.HttpSink) and compression tools import it without fastapi or the store.
Each operation is written once, as a flow of requests (`_Flows`); the two clients differ only in how they send
a request. Every failure is a predictor.errors.ServiceError:
- ServiceUnreachable: no connection (refused, no route, none within the timeout): nothing was sent;
- ServiceTimeout: connected, but no answer within the timeout: the service may have done the work;
- ServiceHTTPError: an error status, with the service's message and problem code.
Connection failures, timeouts and 500/502/503/504 answers are retried `retries` times with exponential backoff
(every request of the API is safe to repeat: uploads are idempotent per run and key, models per content).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from predictor.errors import ServiceError, ServiceHTTPError, ServiceTimeout, ServiceUnreachable
from predictor.records import Measurement

__all__ = ["API_PREFIX", "AsyncLatpredClient", "LatpredClient"]

logger = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
DEFAULT_TIMEOUT_S = 60.0
_RETRY_STATUSES = frozenset({500, 502, 503, 504})
# A Retry-After longer than this is not waited for in full (the next attempt may fail again and say so).
_MAX_RETRY_AFTER_S = 30.0
_MEASUREMENT_BATCH_ROWS = 2000
_UPLOAD_RETRIES = 3
_MAX_DETAIL_CHARS = 2000

T = TypeVar("T")
ModelSource = str | Path | bytes
InputShapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class _Call:
    """One request of a flow; `retries` / `backoff_s` None: the client's."""

    method: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    retries: int | None = None
    backoff_s: float | None = None


# A flow yields the requests it sends and is sent each one's decoded answer (or thrown its ServiceError).
_Flow = Generator[_Call, Any, T]


def _segment(value: str) -> str:
    """A device name or id as one URL path segment."""
    return quote(value, safe="")


def _problem_of(response: httpx.Response) -> tuple[str, str | None]:
    """The service's message and machine-readable code of an error answer (problem+json or {"detail"})."""
    try:
        document = response.json()
    except ValueError:
        return response.text.strip()[:_MAX_DETAIL_CHARS] or response.reason_phrase, None
    if isinstance(document, dict) and ("detail" in document or "title" in document):
        code = document.get("code")
        detail = document.get("detail") or document.get("title")
        return str(detail)[:_MAX_DETAIL_CHARS], None if code is None else str(code)
    return str(document)[:_MAX_DETAIL_CHARS], None


def _decoded(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _transport_failure(exc: httpx.TransportError, call: _Call, base_url: str, timeout_s: float) -> ServiceError:
    """The ServiceError an httpx transport error means: no connection, or no answer in time."""
    where = f"{call.method} {base_url}{call.path}"
    if isinstance(exc, httpx.ConnectTimeout):
        return ServiceUnreachable(f"cannot reach {base_url}: no connection within {timeout_s:g} s")
    if isinstance(exc, httpx.ConnectError):
        return ServiceUnreachable(f"cannot reach {base_url}: {exc or type(exc).__name__}")
    if isinstance(exc, httpx.TimeoutException):
        return ServiceTimeout(f"{where}: no answer within {timeout_s:g} s (the service may still be working on it)",
                              timeout_s=timeout_s)
    return ServiceUnreachable(f"{where}: the connection failed ({type(exc).__name__}: {exc})")


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return min(float(value), _MAX_RETRY_AFTER_S) if value.isdigit() else 0.0


@dataclass
class _Attempt:
    """What one try of a request came to: an answer, or an error, and whether (after how long) to try again."""

    answer: Any = None
    error: ServiceError | None = None
    retry_in_s: float | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.answer


def _attempt_outcome(response: httpx.Response | None, failure: ServiceError | None, call: _Call, attempt: int,
                     retries: int, backoff_s: float) -> _Attempt:
    """Decide on one try: the answer, the final error, or a retry after backoff (or the service's Retry-After)."""
    delay = backoff_s * 2**attempt
    if response is None:
        assert failure is not None
        if attempt < retries:
            logger.warning("%s %s: %s; retrying in %.1f s", call.method, call.path, failure, delay)
            return _Attempt(error=failure, retry_in_s=delay)
        return _Attempt(error=failure)
    if response.status_code < 400:
        return _Attempt(answer=_decoded(response))
    detail, code = _problem_of(response)
    error = ServiceHTTPError(response.status_code, detail, code)
    if response.status_code in _RETRY_STATUSES and attempt < retries:
        delay = max(delay, _retry_after_s(response))
        logger.warning("%s %s: HTTP %d; retrying in %.1f s", call.method, call.path, response.status_code, delay)
        return _Attempt(error=error, retry_in_s=delay)
    return _Attempt(error=error)


def _measurement_json(measurement: Any) -> dict[str, Any]:
    """A measurement as the API wants it, from a dict or an object with key / median_ms / ... attributes."""
    if isinstance(measurement, Mapping):
        fields = dict(measurement)
    elif isinstance(measurement, Measurement):
        fields = measurement.to_dict()
    else:
        fields = {name: getattr(measurement, name) for name in ("key", "median_ms", "p10_ms", "p90_ms", "repeats")}
    key = fields.get("key")
    if key is not None and not isinstance(key, Mapping) and hasattr(key, "to_dict"):
        key = key.to_dict()
    return {
        "key": dict(key) if isinstance(key, Mapping) else key,
        "median_ms": fields.get("median_ms"),
        "p10_ms": fields.get("p10_ms"),
        "p90_ms": fields.get("p90_ms"),
        "repeats": fields.get("repeats"),
    }


def _candidates_json(candidates: Mapping[str, Any] | Iterable[Any]) -> list[dict[str, Any]]:
    """Candidates from {name: config}, [(name, config)] or [{"name", "config"}]."""
    if isinstance(candidates, Mapping):
        return [{"name": str(name), "config": config or {}} for name, config in candidates.items()]
    result = []
    for candidate in candidates:
        if isinstance(candidate, Mapping):
            result.append({"name": str(candidate["name"]), "config": candidate.get("config") or {}})
        else:
            name, config = tuple(candidate)
            result.append({"name": str(name), "config": config or {}})
    return result


def _shapes_field(input_shapes: InputShapes | str | None) -> str | None:
    """Input shapes as the upload form's field: "input=1x3x224x224,mask=1x128"."""
    if input_shapes is None or isinstance(input_shapes, str):
        return input_shapes
    return ",".join(f"{name}={'x'.join(str(d) for d in dims)}" for name, dims in input_shapes.items())


def _shapes_json(input_shapes: InputShapes | str | None) -> dict[str, list[int]] | None:
    if input_shapes is None or isinstance(input_shapes, str):
        return None
    return {name: [int(d) for d in dims] for name, dims in input_shapes.items()}


def _model_bytes(model: ModelSource) -> tuple[bytes, str]:
    if isinstance(model, bytes):
        return model, "model.onnx"
    path = Path(model)
    return path.read_bytes(), path.name


class _Flows:
    """Every operation of the API as a flow of requests, shared by the sync and the async client."""

    def __init__(self) -> None:
        # Model ids by (sha256 of the bytes, input shapes field): a model is uploaded once per client.
        self.uploaded: dict[tuple[str, str], str] = {}

    def get(self, path: str, **params: Any) -> _Flow[Any]:
        return (yield _Call("GET", path, {"params": params} if params else {}))

    def register_device(self, body: dict[str, Any]) -> _Flow[dict[str, Any]]:
        return (yield _Call("POST", f"{API_PREFIX}/devices", {"json": body}))

    def upload_model(self, model: ModelSource, input_shapes: InputShapes | str | None) -> _Flow[dict[str, Any]]:
        data, filename = _model_bytes(model)
        shapes = _shapes_field(input_shapes)
        form = {"input_shapes": shapes} if shapes else {}
        document = yield _Call("POST", f"{API_PREFIX}/models", {
            "files": {"file": (filename, data, "application/octet-stream")}, "data": form})
        self.uploaded[(hashlib.sha256(data).hexdigest(), shapes or "")] = document["id"]
        return document  # type: ignore[no-any-return]

    def ensure_model(self, model: ModelSource, input_shapes: InputShapes | str | None) -> _Flow[str]:
        data, _ = _model_bytes(model)
        cache_key = (hashlib.sha256(data).hexdigest(), _shapes_field(input_shapes) or "")
        if cache_key in self.uploaded:
            return self.uploaded[cache_key]
        if not cache_key[1]:
            # Without input shapes the id is the bytes' sha256: ask before sending the bytes.
            try:
                known = yield _Call("GET", f"{API_PREFIX}/models/{cache_key[0]}")
            except ServiceHTTPError as exc:
                if exc.status_code != 404:
                    raise
            else:
                self.uploaded[cache_key] = str(known["id"])
                return self.uploaded[cache_key]
        yield from self.upload_model(data, input_shapes)
        return self.uploaded[cache_key]

    def predict(self, model_id: str, device: str, config: Mapping[str, Any] | None,
                input_shapes: InputShapes | None) -> _Flow[dict[str, Any]]:
        body: dict[str, Any] = {"device": device, "model_id": model_id, "config": dict(config or {})}
        if input_shapes is not None:
            body["input_shapes"] = _shapes_json(input_shapes)
        return (yield _Call("POST", f"{API_PREFIX}/predict", {"json": body}))

    def rank(self, model: ModelSource, candidates: Mapping[str, Any] | Iterable[Any], device: str,
             target_speedup: float | None, input_shapes: InputShapes | str | None) -> _Flow[dict[str, Any]]:
        body: dict[str, Any] = {
            "device": device,
            "model_id": (yield from self.ensure_model(model, input_shapes)),
            "candidates": _candidates_json(candidates),
        }
        if target_speedup is not None:
            body["target_speedup"] = target_speedup
        shapes = _shapes_json(input_shapes)
        if shapes is not None:
            body["input_shapes"] = shapes
        return (yield _Call("POST", f"{API_PREFIX}/rank", {"json": body}))

    def post_measurements(self, device: str, run_id: str, measurements: Iterable[Any], retries: int,
                          backoff_s: float | None, batch_rows: int) -> _Flow[dict[str, int]]:
        rows = [_measurement_json(m) for m in measurements]
        total = {"inserted": 0, "duplicates": 0, "conflicts": 0}
        for start in range(0, max(len(rows), 1), batch_rows):
            body = {"run_id": run_id, "measurements": rows[start:start + batch_rows]}
            answer = yield _Call("POST", f"{API_PREFIX}/devices/{_segment(device)}/measurements", {"json": body},
                                 retries=retries, backoff_s=backoff_s)
            total["inserted"] += int(answer["inserted"])
            total["duplicates"] += int(answer["duplicates"])
            conflicts = int(answer.get("conflicts", 0))
            if conflicts:
                total["conflicts"] += conflicts
                logger.warning("run %s on %s: %d measurement(s) conflict with stored ones and were not stored "
                               "(first: %s)", run_id, device, conflicts, answer.get("first_conflict"))
        return total

    def start_run(self, device: str, body: dict[str, Any], retries: int) -> _Flow[dict[str, Any]]:
        return (yield _Call("POST", f"{API_PREFIX}/devices/{_segment(device)}/runs", {"json": body}, retries=retries))

    def finish_run(self, device: str, run_id: str, body: dict[str, Any], retries: int) -> _Flow[dict[str, Any]]:
        return (yield _Call("PUT", f"{API_PREFIX}/devices/{_segment(device)}/runs/{_segment(run_id)}", {"json": body},
                            retries=retries))

    def train(self, device: str) -> _Flow[dict[str, Any]]:
        return (yield _Call("POST", f"{API_PREFIX}/devices/{_segment(device)}/train"))


def _device_body(name: str, backend: str, execution_provider: str, runtime_version: str, threads: int, host: str,
                 kernel_profile: Mapping[str, Any] | None) -> dict[str, Any]:
    return {"name": name, "backend": backend, "execution_provider": execution_provider,
            "runtime_version": runtime_version, "threads": threads, "host": host,
            "kernel_profile": None if kernel_profile is None else dict(kernel_profile)}


def _run_body(run_id: str, budget_minutes: float | None, runtime: Mapping[str, Any] | None,
              host: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"run_id": run_id, "budget_minutes": budget_minutes}
    if runtime is not None:
        body["runtime"] = dict(runtime)
    if host is not None:
        body["host"] = host
    return body


def _measurements_params(op_type: str | None, bits: int | None, limit: int, offset: int) -> dict[str, Any]:
    params: dict[str, Any] = {"limit": limit, "offset": offset}
    if op_type is not None:
        params["op_type"] = op_type
    if bits is not None:
        params["bits"] = bits
    return params


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


class _ClientBase:
    """What the sync and the async client share: where the service is, how to ask it, and the flows."""

    def __init__(self, base_url: str, token: str | None, timeout_s: float, retries: int, backoff_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._headers = _headers(token)
        self._flows = _Flows()

    def _policy(self, call: _Call) -> tuple[int, float]:
        """The call's retries and backoff: its own, else the client's."""
        return (self.retries if call.retries is None else call.retries,
                self.backoff_s if call.backoff_s is None else call.backoff_s)

    def _failure(self, exc: httpx.TransportError, call: _Call) -> ServiceError:
        return _transport_failure(exc, call, self.base_url, self.timeout_s)


class LatpredClient(_ClientBase):
    """`LatpredClient("http://host:8000", token=...)`: the REST API from Python; every failure a ServiceError.

    `retries`: how often a request that failed to connect, timed out or got a 500/502/503/504 is sent again
    (uploads of measurements and runs take `retries` of their own, 3 by default). `transport` swaps the network
    (an httpx transport); `http_client` reuses a client (e.g. FastAPI's TestClient), which this one then does not
    close.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = 0, backoff_s: float = 0.5, transport: httpx.BaseTransport | None = None,
                 http_client: httpx.Client | None = None) -> None:
        super().__init__(base_url, token, timeout_s, retries, backoff_s)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> LatpredClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        """Send one request, retrying as the call or the client says; the decoded answer or a ServiceError."""
        retries, backoff_s = self._policy(call)
        attempt = 0
        while True:
            response, failure = None, None
            try:
                response = self._http.request(call.method, call.path, headers=self._headers, **call.options)
            except httpx.TransportError as exc:
                failure = self._failure(exc, call)
            outcome = _attempt_outcome(response, failure, call, attempt, retries, backoff_s)
            if outcome.retry_in_s is None:
                return outcome.result()
            time.sleep(outcome.retry_in_s)
            attempt += 1

    def _run(self, flow: _Flow[T]) -> T:
        """Drive a flow: send each request it yields, hand it the answer or throw it the error."""
        answer: Any = None
        error: ServiceError | None = None
        while True:
            try:
                call = flow.send(answer) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                answer, error = self._send(call), None
            except ServiceError as exc:
                answer, error = None, exc

    def health(self) -> dict[str, Any]:
        return self._run(self._flows.get(f"{API_PREFIX}/health"))  # type: ignore[no-any-return]

    def devices(self) -> list[dict[str, Any]]:
        return self._run(self._flows.get(f"{API_PREFIX}/devices"))["data"]  # type: ignore[no-any-return]

    def device(self, name: str) -> dict[str, Any]:
        """The device with its runs, table size per op type and regressors."""
        return self._run(self._flows.get(f"{API_PREFIX}/devices/{_segment(name)}"))  # type: ignore[no-any-return]

    def register_device(self, name: str, backend: str, execution_provider: str, runtime_version: str, threads: int,
                        host: str = "", kernel_profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Register the device (a 409 ServiceHTTPError if the name is registered with another runtime or kernel
        profile; the same fields again are answered with the device)."""
        return self._run(self._flows.register_device(
            _device_body(name, backend, execution_provider, runtime_version, threads, host, kernel_profile)))

    def model(self, model_id: str) -> dict[str, Any]:
        return self._run(self._flows.get(f"{API_PREFIX}/models/{_segment(model_id)}"))  # type: ignore[no-any-return]

    def upload_model(self, model: ModelSource, input_shapes: InputShapes | str | None = None) -> dict[str, Any]:
        """Upload an ONNX model (path or bytes); returns {"id", "name", "size_bytes", "inputs", "kernels"}."""
        return self._run(self._flows.upload_model(model, input_shapes))

    def ensure_model(self, model: ModelSource, input_shapes: InputShapes | str | None = None) -> str:
        """The model's id on the service, uploading it only if neither this client nor the service has it."""
        return self._run(self._flows.ensure_model(model, input_shapes))

    def predict(self, model_id: str, device: str, config: Mapping[str, Any] | None = None,
                input_shapes: InputShapes | None = None) -> dict[str, Any]:
        """The uploaded model's predicted latency on the device (the Estimate document, with model_id and config)."""
        return self._run(self._flows.predict(model_id, device, config, input_shapes))

    def rank(self, model: ModelSource, candidates: Mapping[str, Any] | Iterable[Any], device: str,
             target_speedup: float | None = None, input_shapes: InputShapes | str | None = None) -> dict[str, Any]:
        """Upload the model once (by content hash) and rank the candidate configs, fastest first."""
        return self._run(self._flows.rank(model, candidates, device, target_speedup, input_shapes))

    def post_measurements(self, device: str, run_id: str, measurements: Iterable[Any], retries: int = _UPLOAD_RETRIES,
                          backoff_s: float | None = None,
                          batch_rows: int = _MEASUREMENT_BATCH_ROWS) -> dict[str, int]:
        """Upload measurements in batches; safe to retry (the service skips rows it already has for the run).

        Returns the counts of inserted, duplicate and conflicting rows (duplicates whose median differs from the
        one the service kept: not stored; each batch with some is logged with its first conflict).
        """
        return self._run(self._flows.post_measurements(device, run_id, measurements, retries, backoff_s, batch_rows))

    def measurements(self, device: str, op_type: str | None = None, bits: int | None = None, limit: int = 100,
                     offset: int = 0) -> dict[str, Any]:
        """One page of the device's measurements ({"data", "count", "limit", "offset", ...})."""
        return self._run(self._flows.get(  # type: ignore[no-any-return]
            f"{API_PREFIX}/devices/{_segment(device)}/measurements", **_measurements_params(op_type, bits, limit,
                                                                                             offset)))

    def start_run(self, device: str, run_id: str, budget_minutes: float | None = None,
                  runtime: Mapping[str, Any] | None = None, host: str | None = None,
                  retries: int = _UPLOAD_RETRIES) -> dict[str, Any]:
        """Record a running profiling run (idempotent), with the runtime and host it measures with."""
        return self._run(self._flows.start_run(device, _run_body(run_id, budget_minutes, runtime, host), retries))

    def finish_run(self, device: str, run_id: str, status: str = "finished", report: Mapping[str, Any] | None = None,
                   retries: int = _UPLOAD_RETRIES) -> dict[str, Any]:
        """Mark the run finished (or killed) with its report (idempotent; a final run is a 409 otherwise)."""
        body = {"status": status, "report": None if report is None else dict(report)}
        return self._run(self._flows.finish_run(device, run_id, body, retries))

    def train(self, device: str) -> dict[str, Any]:
        """Queue retraining the device's regressors; returns the job ({"job_id", "status", ...})."""
        return self._run(self._flows.train(device))

    def job(self, job_id: str) -> dict[str, Any]:
        return self._run(self._flows.get(f"{API_PREFIX}/jobs/{_segment(job_id)}"))  # type: ignore[no-any-return]


class AsyncLatpredClient(_ClientBase):
    """`async with AsyncLatpredClient("http://host:8000", token=...) as client:` the same operations as
    LatpredClient, awaited (for tools that ask many questions at once)."""

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 retries: int = 0, backoff_s: float = 0.5, transport: httpx.AsyncBaseTransport | None = None,
                 http_client: httpx.AsyncClient | None = None) -> None:
        super().__init__(base_url, token, timeout_s, retries, backoff_s)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, transport=transport)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncLatpredClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _send(self, call: _Call) -> Any:
        retries, backoff_s = self._policy(call)
        attempt = 0
        while True:
            response, failure = None, None
            try:
                response = await self._http.request(call.method, call.path, headers=self._headers, **call.options)
            except httpx.TransportError as exc:
                failure = self._failure(exc, call)
            outcome = _attempt_outcome(response, failure, call, attempt, retries, backoff_s)
            if outcome.retry_in_s is None:
                return outcome.result()
            await asyncio.sleep(outcome.retry_in_s)
            attempt += 1

    async def _run(self, flow: _Flow[T]) -> T:
        answer: Any = None
        error: ServiceError | None = None
        while True:
            try:
                call = flow.send(answer) if error is None else flow.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                answer, error = await self._send(call), None
            except ServiceError as exc:
                answer, error = None, exc

    async def health(self) -> dict[str, Any]:
        return await self._run(self._flows.get(f"{API_PREFIX}/health"))  # type: ignore[no-any-return]

    async def devices(self) -> list[dict[str, Any]]:
        return (await self._run(self._flows.get(f"{API_PREFIX}/devices")))["data"]  # type: ignore[no-any-return]

    async def device(self, name: str) -> dict[str, Any]:
        return await self._run(self._flows.get(  # type: ignore[no-any-return]
            f"{API_PREFIX}/devices/{_segment(name)}"))

    async def register_device(self, name: str, backend: str, execution_provider: str, runtime_version: str,
                              threads: int, host: str = "",
                              kernel_profile: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self._run(self._flows.register_device(
            _device_body(name, backend, execution_provider, runtime_version, threads, host, kernel_profile)))

    async def model(self, model_id: str) -> dict[str, Any]:
        return await self._run(self._flows.get(  # type: ignore[no-any-return]
            f"{API_PREFIX}/models/{_segment(model_id)}"))

    async def upload_model(self, model: ModelSource, input_shapes: InputShapes | str | None = None) -> dict[str, Any]:
        return await self._run(self._flows.upload_model(model, input_shapes))

    async def ensure_model(self, model: ModelSource, input_shapes: InputShapes | str | None = None) -> str:
        return await self._run(self._flows.ensure_model(model, input_shapes))

    async def predict(self, model_id: str, device: str, config: Mapping[str, Any] | None = None,
                      input_shapes: InputShapes | None = None) -> dict[str, Any]:
        return await self._run(self._flows.predict(model_id, device, config, input_shapes))

    async def rank(self, model: ModelSource, candidates: Mapping[str, Any] | Iterable[Any], device: str,
                   target_speedup: float | None = None,
                   input_shapes: InputShapes | str | None = None) -> dict[str, Any]:
        return await self._run(self._flows.rank(model, candidates, device, target_speedup, input_shapes))

    async def post_measurements(self, device: str, run_id: str, measurements: Iterable[Any],
                                retries: int = _UPLOAD_RETRIES, backoff_s: float | None = None,
                                batch_rows: int = _MEASUREMENT_BATCH_ROWS) -> dict[str, int]:
        return await self._run(self._flows.post_measurements(device, run_id, measurements, retries, backoff_s,
                                                             batch_rows))

    async def measurements(self, device: str, op_type: str | None = None, bits: int | None = None, limit: int = 100,
                           offset: int = 0) -> dict[str, Any]:
        return await self._run(self._flows.get(  # type: ignore[no-any-return]
            f"{API_PREFIX}/devices/{_segment(device)}/measurements", **_measurements_params(op_type, bits, limit,
                                                                                             offset)))

    async def start_run(self, device: str, run_id: str, budget_minutes: float | None = None,
                        runtime: Mapping[str, Any] | None = None, host: str | None = None,
                        retries: int = _UPLOAD_RETRIES) -> dict[str, Any]:
        return await self._run(self._flows.start_run(device, _run_body(run_id, budget_minutes, runtime, host),
                                                     retries))

    async def finish_run(self, device: str, run_id: str, status: str = "finished",
                         report: Mapping[str, Any] | None = None, retries: int = _UPLOAD_RETRIES) -> dict[str, Any]:
        body = {"status": status, "report": None if report is None else dict(report)}
        return await self._run(self._flows.finish_run(device, run_id, body, retries))

    async def train(self, device: str) -> dict[str, Any]:
        return await self._run(self._flows.train(device))

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._run(self._flows.get(f"{API_PREFIX}/jobs/{_segment(job_id)}"))  # type: ignore[no-any-return]
