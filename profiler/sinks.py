"""Sinks for profiling runs: the SQL store directly, or a central latpred service over REST."""
from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from predictor.estimate import reported_reference_ms
from predictor.store import (
    MeasurementIn,
    add_measurements,
    finish_run,
    get_device,
    list_runs,
    lookup_table,
    session_scope,
    start_run,
    update_run_report,
)

__all__ = ["HttpSink", "StoreSink", "UploadError", "reference_times"]

logger = logging.getLogger(__name__)


def reference_times(reports: list[dict[str, Any]], kind: str = "fp32") -> list[float]:
    """Times of the `kind` reference kernel that earlier runs' reports recorded (their baselines and starts).

    Each report gives its baseline, then its start (predictor.estimate.reported_reference_ms reads them).
    """
    return [value for report in reports
            for value in (reported_reference_ms(report, kind), reported_reference_ms(report, kind, baseline=False))
            if value is not None]


class UploadError(RuntimeError):
    """The service refused or could not take an upload after retries."""


class StoreSink:
    """Writes each item's measurements and the run's progress report in one transaction."""

    def __init__(self, sessions: sessionmaker[Session], device_name: str) -> None:
        self.sessions = sessions
        self.device_name = device_name

    def known_table(self) -> dict[str, float]:
        with session_scope(self.sessions) as session:
            return lookup_table(session, get_device(session, self.device_name))

    def done_items(self) -> set[str]:
        with session_scope(self.sessions) as session:
            runs = list_runs(session, get_device(session, self.device_name))
            return {item for run in runs for item in (run.report or {}).get("items_done", [])}

    def previous_references(self, kind: str = "fp32") -> list[float]:
        with session_scope(self.sessions) as session:
            runs = list_runs(session, get_device(session, self.device_name))
            return reference_times([run.report or {} for run in runs], kind)

    def start(self, run_id: str, budget_minutes: float | None, runtime: dict[str, Any] | None = None,
              host: str | None = None) -> None:
        with session_scope(self.sessions) as session:
            start_run(session, get_device(session, self.device_name), run_id, budget_minutes, runtime=runtime,
                      host=host)

    def write(self, run_id: str, rows: list[MeasurementIn], report: dict[str, Any]) -> int:
        with session_scope(self.sessions) as session:
            inserted = add_measurements(session, get_device(session, self.device_name), run_id, rows) if rows else 0
            update_run_report(session, run_id, report)
        return inserted

    def finish(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        with session_scope(self.sessions) as session:
            finish_run(session, run_id, status, report)


class HttpSink:
    """Posts measurements to a latpred service in batches (idempotent per run and key), with retries."""

    def __init__(self, base_url: str, token: str | None, device_name: str, retries: int = 5,
                 timeout_s: float = 30.0, backoff_s: float = 0.5, client: Any = None) -> None:
        import httpx

        self.device_name = device_name
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self.client.headers.update(headers)

    def register_device(self, fields: dict[str, Any]) -> None:
        """Register the device on the service (a 409 if it is registered with another runtime)."""
        self._request("POST", "/api/devices", json=fields)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        last_error = ""
        for attempt in range(self.retries):
            try:
                response = self.client.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise UploadError(f"{method} {path}: {response.status_code} {response.text[:300]}")
                    return response.json() if response.content else None
                last_error = f"{response.status_code} {response.text[:200]}"
            delay = self.backoff_s * (2 ** attempt)
            logger.warning("upload %s %s failed (%s); retrying in %.1fs", method, path, last_error, delay)
            time.sleep(delay)
        raise UploadError(f"{method} {path} failed after {self.retries} attempts: {last_error}")

    def known_table(self) -> dict[str, float]:
        table: dict[str, float] = {}
        offset = 0
        while True:
            page = self._request("GET", f"/api/devices/{self.device_name}/measurements",
                                 params={"limit": 1000, "offset": offset})
            rows = page.get("data", []) if isinstance(page, dict) else []
            for row in rows:
                table[row["key_hash"]] = row["median_ms"]
            if len(rows) < 1000:
                return table
            offset += len(rows)

    def done_items(self) -> set[str]:
        device = self._request("GET", f"/api/devices/{self.device_name}")
        return {item for run in device.get("runs", []) for item in (run.get("report") or {}).get("items_done", [])}

    def previous_references(self, kind: str = "fp32") -> list[float]:
        device = self._request("GET", f"/api/devices/{self.device_name}")
        return reference_times([run.get("report") or {} for run in device.get("runs", [])], kind)

    def start(self, run_id: str, budget_minutes: float | None, runtime: dict[str, Any] | None = None,
              host: str | None = None) -> None:
        self._request("POST", f"/api/devices/{self.device_name}/runs",
                      json={"run_id": run_id, "budget_minutes": budget_minutes, "runtime": runtime, "host": host})

    def write(self, run_id: str, rows: list[MeasurementIn], report: dict[str, Any]) -> int:
        if not rows:
            return 0
        payload = {"run_id": run_id, "measurements": [
            {"key": row.key, "median_ms": row.median_ms, "p10_ms": row.p10_ms, "p90_ms": row.p90_ms,
             "repeats": row.repeats} for row in rows]}
        result = self._request("POST", f"/api/devices/{self.device_name}/measurements", json=payload)
        return int(result.get("inserted", 0)) if isinstance(result, dict) else 0

    def finish(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        self._request("PUT", f"/api/devices/{self.device_name}/runs/{run_id}",
                      json={"status": status, "report": report})
