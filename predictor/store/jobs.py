"""The job queue in the store: any service process queues a job, a worker process (`latpred worker`) runs it.

A job is claimed by one worker with a single conditional UPDATE (queued -> running), which PostgreSQL and SQLite
both make atomic: two workers never run the same job. The running worker writes a heartbeat; a running job whose
heartbeat stopped (its worker died) is queued again, at most `max_attempts` times in all, then failed.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, or_, select, update
from sqlalchemy.orm import Session

from predictor.store.models import Device, Job, utc_now

__all__ = [
    "JOB_STATUSES",
    "JobRecord",
    "claim_job",
    "fail_job",
    "finish_job",
    "get_job",
    "heartbeat_job",
    "requeue_stale_jobs",
    "submit_job",
]

JOB_STATUSES = ("queued", "running", "finished", "failed")
_MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class JobRecord:
    """A job as any process reads it from the store."""

    job_id: str
    kind: str
    device: str
    status: str
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    result: Any
    error: str | None


def _jobs() -> Table:
    table = Job.__table__
    assert isinstance(table, Table)
    return table


def _record(job: Job, device_name: str) -> JobRecord:
    return JobRecord(job_id=job.id, kind=job.kind, device=device_name, status=job.status, attempts=job.attempts,
                     created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                     worker=job.worker, result=job.result, error=job.error)


def submit_job(session: Session, kind: str, device: Device) -> JobRecord:
    """Queue a job of that kind for the device; flushes (commit it for a worker to see it)."""
    job = Job(id=uuid.uuid4().hex, kind=kind, device_id=device.id, status="queued", attempts=0,
              created_at=utc_now())
    session.add(job)
    session.flush()
    return _record(job, device.name)


def get_job(session: Session, job_id: str) -> JobRecord | None:
    """The job with that id, or None."""
    row = session.execute(select(Job, Device.name).join(Device, Device.id == Job.device_id)
                          .where(Job.id == job_id).execution_options(populate_existing=True)).one_or_none()
    return None if row is None else _record(row[0], row[1])


def claim_job(session: Session, worker: str) -> JobRecord | None:
    """Take the oldest queued job for `worker` (it becomes running, its attempts counted); None when none waits.

    Commit right after: other workers skip it from then on.
    """
    jobs = _jobs()
    while True:
        job_id = session.scalar(select(jobs.c.id).where(jobs.c.status == "queued")
                                .order_by(jobs.c.created_at, jobs.c.id).limit(1))
        if job_id is None:
            return None
        now = utc_now()
        # Conditional on still being queued: a worker that lost the race for this job takes the next one.
        taken = session.execute(
            update(jobs).where(jobs.c.id == job_id, jobs.c.status == "queued")
            .values(status="running", worker=worker, started_at=now, heartbeat_at=now,
                    attempts=jobs.c.attempts + 1)).rowcount
        if taken:
            return get_job(session, job_id)


def heartbeat_job(session: Session, job_id: str, worker: str) -> bool:
    """Note that the worker is still running the job; False if the job is no longer its own (queued again)."""
    jobs = _jobs()
    return bool(session.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                   jobs.c.status == "running")
                                .values(heartbeat_at=utc_now())).rowcount)


def _close(session: Session, job_id: str, worker: str, **values: Any) -> bool:
    jobs = _jobs()
    return bool(session.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                   jobs.c.status == "running")
                                .values(finished_at=utc_now(), **values)).rowcount)


def finish_job(session: Session, job_id: str, worker: str, result: Any) -> bool:
    """Record the job's result (plain JSON values); False if the job is no longer the worker's own."""
    return _close(session, job_id, worker, status="finished", result=result, error=None)


def fail_job(session: Session, job_id: str, worker: str, error: str) -> bool:
    """Record why the job failed (one line); False if the job is no longer the worker's own."""
    message = " ".join(error.split())[:_MAX_ERROR_CHARS] or "failed"
    return _close(session, job_id, worker, status="failed", error=message)


def requeue_stale_jobs(session: Session, stale_after_s: float, max_attempts: int) -> int:
    """Running jobs whose heartbeat is older than `stale_after_s` (their worker died): queued again, or failed once
    they were tried `max_attempts` times. Returns how many were found."""
    jobs = _jobs()
    cutoff = utc_now() - timedelta(seconds=stale_after_s)
    stale = and_(jobs.c.status == "running", or_(jobs.c.heartbeat_at.is_(None), jobs.c.heartbeat_at < cutoff))
    failed = session.execute(
        update(jobs).where(stale, jobs.c.attempts >= max_attempts)
        .values(status="failed", finished_at=utc_now(),
                error=f"the worker running it stopped (no heartbeat for {stale_after_s:g} s), {max_attempts} "
                      "times: not tried again")).rowcount
    queued = session.execute(
        update(jobs).where(stale, jobs.c.attempts < max_attempts)
        .values(status="queued", worker=None, started_at=None, heartbeat_at=None)).rowcount
    return int(failed or 0) + int(queued or 0)
