"""The job worker (`latpred worker`): runs the jobs any service process queued in the store.

Any number of workers may run, on any host that reaches the database: each job is claimed by one of them
(predictor.store.jobs). While a job runs, a thread writes its heartbeat; a job whose worker died is queued again
by the next worker that looks (after LATPRED_JOB_STALE_S), at most LATPRED_JOB_MAX_ATTEMPTS times.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from predictor.allocator import release_free_memory, tune_allocator
from predictor.errors import LatpredError
from predictor.store import (
    Device,
    JobRecord,
    Store,
    claim_job,
    fail_job,
    finish_job,
    get_device,
    get_job,
    heartbeat_job,
    open_store,
    requeue_stale_jobs,
    session_scope,
)
from service.settings import Settings

__all__ = ["JOB_KINDS", "JobWorker"]

logger = logging.getLogger(__name__)


def _train(session: Session, device: Device) -> Any:
    # Imported when a job runs: training pulls in LightGBM.
    from predictor.estimation.training import train_device

    result, overhead = train_device(session, device)
    logger.info("retrained regressors and overhead of device %r: %s", device.name, overhead)
    return result


# What each kind of job does, in one transaction with the device it is for; its return value is the job's result.
JOB_KINDS: dict[str, Callable[[Session, Device], Any]] = {"train": _train}


def to_jsonable(value: Any) -> Any:
    """Turn a job result (dicts, dataclasses, numpy scalars, objects with to_dict) into plain JSON values.

    Here, not beside the API's job routes: a worker waiting for jobs imports no web framework."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return to_jsonable(value.item())
    if hasattr(value, "tolist") and callable(value.tolist):  # numpy array
        return to_jsonable(value.tolist())
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _describe(exc: Exception) -> str:
    if isinstance(exc, LatpredError | ValueError):
        return str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


class JobWorker:
    """Claims queued jobs one at a time and runs them (see the module docstring)."""

    def __init__(self, settings: Settings, name: str | None = None, store: Store | None = None,
                 exit_with: int | None = None) -> None:
        self.settings = settings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._store = store
        # A process whose end ends this worker too (the `latpred serve` that started it).
        self.exit_with = exit_with

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings)
        return self._store

    def run_once(self) -> JobRecord | None:
        """Run the oldest queued job (after queueing again those whose worker died); None when none waits."""
        with session_scope(self.store.sessions) as session:
            found = requeue_stale_jobs(session, self.settings.job_stale_s, self.settings.job_max_attempts)
            if found:
                logger.warning("%d job(s) whose worker stopped were queued again or failed", found)
        with session_scope(self.store.sessions) as session:
            job = claim_job(session, self.name)
        if job is None:
            return None
        logger.info("job %s: %s on %r (attempt %d)", job.job_id, job.kind, job.device, job.attempts)
        stop_beating = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.job_id, stop_beating), name="job-heartbeat",
                                daemon=True)
        beat.start()
        try:
            result = self._run(job)
        except Exception as exc:
            if not isinstance(exc, LatpredError | ValueError):
                logger.exception("job %s (%s on %r) failed", job.job_id, job.kind, job.device)
            with session_scope(self.store.sessions) as session:
                fail_job(session, job.job_id, self.name, _describe(exc))
        else:
            with session_scope(self.store.sessions) as session:
                if not finish_job(session, job.job_id, self.name, result):
                    logger.warning("job %s was taken over by another worker; its result here is dropped", job.job_id)
        finally:
            stop_beating.set()
            beat.join()
            release_free_memory()  # a training job's arrays, not kept while the worker waits for the next
        with session_scope(self.store.sessions) as session:
            return get_job(session, job.job_id)

    def _run(self, job: JobRecord) -> Any:
        work = JOB_KINDS.get(job.kind)
        if work is None:
            raise ValueError(f"unknown kind of job {job.kind!r}; this worker runs {sorted(JOB_KINDS)}")
        with session_scope(self.store.sessions) as session:
            return to_jsonable(work(session, get_device(session, job.device)))

    def _heartbeat(self, job_id: str, stop: threading.Event) -> None:
        interval = max(0.1, self.settings.job_stale_s / 4)
        while not stop.wait(interval):
            try:
                with session_scope(self.store.sessions) as session:
                    heartbeat_job(session, job_id, self.name)
            except Exception as exc:  # the database is away for a moment: the next beat tries again
                logger.warning("job %s: heartbeat failed: %s", job_id, exc)

    def run(self, stop: threading.Event, once: bool = False) -> int:
        """Run jobs until `stop` is set (or, with `once`, until none waits); how many were run."""
        done = 0
        tune_allocator()
        logger.info("worker %s waiting for jobs", self.name)
        while not stop.is_set() and self._parent_alive():
            try:
                job = self.run_once()
            except LatpredError as exc:  # the database is unreachable: wait and look again
                logger.warning("worker %s: %s", self.name, exc)
                job = None
            if job is not None:
                done += 1
                continue
            if once:
                break
            stop.wait(self.settings.job_poll_s)
        return done

    def _parent_alive(self) -> bool:
        if self.exit_with is None:
            return True
        try:
            os.kill(self.exit_with, 0)
        except ProcessLookupError:
            logger.info("worker %s: the process that started it is gone; exiting", self.name)
            return False
        return True

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

