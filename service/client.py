"""A small synchronous client of the latpred REST API (httpx only: profiler agents import it without fastapi)."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["LatpredClient", "LatpredClientError"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({500, 502, 503, 504})
_DEFAULT_TIMEOUT_S = 60.0
_MEASUREMENT_BATCH_ROWS = 2000


class LatpredClientError(Exception):
    """The service answered with an error (status_code, detail), or could not be reached (status_code 0)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}" if status_code else detail)
        self.status_code = status_code
        self.detail = detail


def _detail_of(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        return response.text.strip()[:2000] or response.reason_phrase
    if isinstance(document, dict) and "detail" in document:
        return str(document["detail"])
    return str(document)[:2000]


def _segment(value: str) -> str:
    """A device name or id as one URL path segment."""
    return quote(value, safe="")


def _measurement_json(measurement: Any) -> dict[str, Any]:
    """A measurement as the API wants it, from a dict or an object with key / median_ms / ... attributes."""
    if isinstance(measurement, Mapping):
        fields = dict(measurement)
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


def _shapes_field(input_shapes: Mapping[str, Sequence[int]] | str | None) -> str | None:
    if input_shapes is None or isinstance(input_shapes, str):
        return input_shapes
    return ",".join(f"{name}={'x'.join(str(d) for d in dims)}" for name, dims in input_shapes.items())


class LatpredClient:
    """`LatpredClient("http://host:8000", token=...)`; every method raises LatpredClientError on failure."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = _DEFAULT_TIMEOUT_S,
                 transport: httpx.BaseTransport | None = None, http_client: httpx.Client | None = None) -> None:
        """`transport` swaps the network (httpx.MockTransport in tests); `http_client` reuses a client
        (e.g. FastAPI's TestClient), which this object then does not close."""
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)
        self._uploaded: dict[tuple[str, str], str] = {}

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> LatpredClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, retries: int = 0, backoff_s: float = 0.5, **kwargs: Any) -> Any:
        """Send; retry connection errors and 5xx answers `retries` times with exponential backoff."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, headers=self._headers, **kwargs)
            except httpx.TransportError as exc:
                if attempt >= retries:
                    raise LatpredClientError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
                logger.warning("%s %s: %s; retrying", method, path, exc)
            else:
                if response.status_code < 400:
                    if response.headers.get("content-type", "").startswith("application/json"):
                        return response.json()
                    return response.text
                if response.status_code not in _RETRY_STATUSES or attempt >= retries:
                    raise LatpredClientError(response.status_code, _detail_of(response))
                logger.warning("%s %s: HTTP %d; retrying", method, path, response.status_code)
            time.sleep(backoff_s * 2**attempt)
            attempt += 1

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/api/health")

    def devices(self) -> list[dict[str, Any]]:
        return self._request("GET", "/api/devices")["data"]

    def device(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/api/devices/{_segment(name)}")

    def register_device(self, name: str, backend: str, execution_provider: str, runtime_version: str,
                        threads: int, host: str = "", kernel_profile: dict[str, Any] | None = None) -> dict[str, Any]:
        """Register the device (a 409 if the name is registered with another runtime or kernel profile)."""
        body = {"name": name, "backend": backend, "execution_provider": execution_provider,
                "runtime_version": runtime_version, "threads": threads, "host": host,
                "kernel_profile": kernel_profile}
        return self._request("POST", "/api/devices", json=body)

    def model(self, model_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/models/{_segment(model_id)}")

    def upload_model(self, path_or_bytes: str | Path | bytes,
                     input_shapes: Mapping[str, Sequence[int]] | str | None = None) -> dict[str, Any]:
        """Upload an ONNX model; returns {"id", "name", "size_bytes", "inputs", "kernels"}."""
        if isinstance(path_or_bytes, bytes):
            data, filename = path_or_bytes, "model.onnx"
        else:
            path = Path(path_or_bytes)
            data, filename = path.read_bytes(), path.name
        form = {}
        shapes = _shapes_field(input_shapes)
        if shapes:
            form["input_shapes"] = shapes
        document = self._request("POST", "/api/models", files={"file": (filename, data, "application/octet-stream")},
                                 data=form)
        self._uploaded[(hashlib.sha256(data).hexdigest(), shapes or "")] = document["id"]
        return document

    def _model_id_for(self, path_or_bytes: str | Path | bytes,
                      input_shapes: Mapping[str, Sequence[int]] | str | None) -> str:
        """The model's id, uploading it only if this client or the server has not seen the bytes."""
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        cache_key = (hashlib.sha256(data).hexdigest(), _shapes_field(input_shapes) or "")
        if cache_key in self._uploaded:
            return self._uploaded[cache_key]
        if not cache_key[1]:
            # Without input shapes the id is the bytes' sha256: ask before sending the bytes.
            try:
                self._uploaded[cache_key] = self.model(cache_key[0])["id"]
                return self._uploaded[cache_key]
            except LatpredClientError as exc:
                if exc.status_code != 404:
                    raise
        self.upload_model(path_or_bytes, input_shapes)
        return self._uploaded[cache_key]

    def predict(self, model_id: str, device: str, config: Mapping[str, Any] | None = None,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
        """The model's predicted latency on the device (the Estimate document)."""
        body: dict[str, Any] = {"device": device, "model_id": model_id, "config": dict(config or {})}
        if input_shapes is not None:
            body["input_shapes"] = {name: list(dims) for name, dims in input_shapes.items()}
        return self._request("POST", "/api/predict", json=body)

    def rank(self, model_path: str | Path | bytes, candidates: Mapping[str, Any] | Iterable[Any], device: str,
             target_speedup: float | None = None,
             input_shapes: Mapping[str, Sequence[int]] | str | None = None) -> dict[str, Any]:
        """Upload the model once (cached by content hash) and rank the candidate configs, fastest first."""
        body: dict[str, Any] = {
            "device": device,
            "model_id": self._model_id_for(model_path, input_shapes),
            "candidates": _candidates_json(candidates),
        }
        if target_speedup is not None:
            body["target_speedup"] = target_speedup
        return self._request("POST", "/api/rank", json=body)

    def post_measurements(self, device: str, run_id: str, measurements: Iterable[Any], retries: int = 3,
                          backoff_s: float = 0.5, batch_rows: int = _MEASUREMENT_BATCH_ROWS) -> dict[str, int]:
        """Upload measurements in batches; safe to retry (the server skips rows it already has for the run).

        Returns the counts of inserted, duplicate and conflicting rows (duplicates whose median differs from the
        one the server kept: not stored; each batch with some is logged with its first conflict).
        """
        rows = [_measurement_json(m) for m in measurements]
        total = {"inserted": 0, "duplicates": 0, "conflicts": 0}
        for start in range(0, max(len(rows), 1), batch_rows):
            body = {"run_id": run_id, "measurements": rows[start:start + batch_rows]}
            answer = self._request("POST", f"/api/devices/{_segment(device)}/measurements", json=body, retries=retries,
                                   backoff_s=backoff_s)
            total["inserted"] += int(answer["inserted"])
            total["duplicates"] += int(answer["duplicates"])
            conflicts = int(answer.get("conflicts", 0))
            if conflicts:
                total["conflicts"] += conflicts
                logger.warning("run %s on %s: %d measurement(s) conflict with stored ones (first: %s)", run_id,
                               device, conflicts, answer.get("first_conflict"))
        return total

    def measurements(self, device: str, op_type: str | None = None, bits: int | None = None, limit: int = 100,
                     offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if op_type is not None:
            params["op_type"] = op_type
        if bits is not None:
            params["bits"] = bits
        return self._request("GET", f"/api/devices/{_segment(device)}/measurements", params=params)

    def start_run(self, device: str, run_id: str, budget_minutes: float | None = None,
                  retries: int = 3) -> dict[str, Any]:
        """Record a running profiling run (idempotent)."""
        body = {"run_id": run_id, "budget_minutes": budget_minutes}
        return self._request("POST", f"/api/devices/{_segment(device)}/runs", json=body,
                             retries=retries)

    def finish_run(self, device: str, run_id: str, status: str = "finished",
                   report: Mapping[str, Any] | None = None, retries: int = 3) -> dict[str, Any]:
        """Mark the run finished (or killed) with its report (idempotent)."""
        body = {"status": status, "report": None if report is None else dict(report)}
        return self._request("PUT", f"/api/devices/{_segment(device)}/runs/{_segment(run_id)}", json=body,
                             retries=retries)

    def train(self, device: str) -> dict[str, Any]:
        """Start retraining the device's regressors; returns the job ({"job_id", "status"})."""
        return self._request("POST", f"/api/devices/{_segment(device)}/train")

    def job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/api/jobs/{_segment(job_id)}")
