"""Sinks for profiling runs: the SQL store directly, or a central latpred service over REST."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
from sqlalchemy.orm import Session, sessionmaker

from predictor.client import LatpredClient
from predictor.errors import LatpredError, ServiceError, ServiceHTTPError
from predictor.records import RunReport, reports_of
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

T = TypeVar("T")
_TABLE_PAGE_ROWS = 1000


def reference_times(reports: Sequence[RunReport], kind: str = "fp32") -> list[float]:
    """Times of the `kind` reference kernel that earlier runs' reports recorded (each its baseline, then its start)."""
    return [value for report in reports
            for value in (report.reference_of(kind), report.reference_of(kind, baseline=False))
            if value is not None]


class UploadError(LatpredError):
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
            return {item for report in reports_of(runs) for item in report.items_done}

    def previous_references(self, kind: str = "fp32") -> list[float]:
        with session_scope(self.sessions) as session:
            runs = list_runs(session, get_device(session, self.device_name))
            return reference_times(reports_of(runs), kind)

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
    """Posts a run to a latpred service through predictor.client.LatpredClient: measurements in batches
    (idempotent per run and key), each request retried `retries` times on connection failures and 5xx answers."""

    def __init__(self, base_url: str, token: str | None, device_name: str, retries: int = 4,
                 timeout_s: float = 30.0, backoff_s: float = 0.5, client: httpx.Client | None = None) -> None:
        """`client`: an httpx client to send through (FastAPI's TestClient in tests) instead of one of its own."""
        self.device_name = device_name
        self.retries = retries
        self.service = LatpredClient(base_url, token=token, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s,
                                     http_client=client)

    def close(self) -> None:
        self.service.close()

    def _call(self, what: str, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`operation(*args, **kwargs)` of the client; what the service refused or could not take is an UploadError
        saying so."""
        try:
            return operation(*args, **kwargs)
        except ServiceHTTPError as exc:
            if exc.status_code == 409:
                message = f"{what}: the service refused it as a conflict with what it holds: {exc.detail}"
                logger.error("%s", message)
                raise UploadError(f"{message} (HTTP 409)") from exc
            raise UploadError(f"{what}: HTTP {exc.status_code}: {exc.detail}") from exc
        except ServiceError as exc:
            raise UploadError(f"{what}: {exc} (after {self.retries} retries)") from exc

    def register_device(self, fields: dict[str, Any]) -> None:
        """Register the device on the service (refused if it is registered with another runtime or kernel profile)."""
        self._call(f"registering device {self.device_name}", self.service.register_device, **fields)

    def known_table(self) -> dict[str, float]:
        table: dict[str, float] = {}
        offset = 0
        while True:
            page = self._call(f"reading the table of {self.device_name}", self.service.measurements,
                              self.device_name, limit=_TABLE_PAGE_ROWS, offset=offset)
            rows = page.get("data", [])
            for row in rows:
                table[row["key_hash"]] = row["median_ms"]
            if len(rows) < _TABLE_PAGE_ROWS:
                return table
            offset += len(rows)

    def _runs(self) -> list[dict[str, Any]]:
        device = self._call(f"reading device {self.device_name}", self.service.device, self.device_name)
        return list(device.get("runs", []))

    def done_items(self) -> set[str]:
        return {item for run in self._runs() for item in RunReport.from_dict(run.get("report") or {}).items_done}

    def previous_references(self, kind: str = "fp32") -> list[float]:
        return reference_times([RunReport.from_dict(run.get("report") or {}) for run in self._runs()], kind)

    def start(self, run_id: str, budget_minutes: float | None, runtime: dict[str, Any] | None = None,
              host: str | None = None) -> None:
        self._call(f"starting run {run_id}", self.service.start_run, self.device_name, run_id, budget_minutes,
                   runtime=runtime, host=host, retries=self.retries)

    def write(self, run_id: str, rows: list[MeasurementIn], report: dict[str, Any]) -> int:
        if not rows:
            return 0
        counts = self._call(f"uploading measurements of run {run_id}", self.service.post_measurements,
                            self.device_name, run_id, rows, retries=self.retries)
        return counts["inserted"]

    def finish(self, run_id: str, status: str, report: dict[str, Any]) -> None:
        self._call(f"finishing run {run_id}", self.service.finish_run, self.device_name, run_id, status, report,
                   retries=self.retries)
