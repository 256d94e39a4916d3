"""Background regressor training and the states of jobs (kept in this process only, see service.api.jobs)."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, HTTPException, status

from predictor.store import get_device, session_scope
from service.api.deps import JobsDep, PredictionsDep, ReadAccess, SessionDep, StoreDep, WriteAccess
from service.api.jobs import Job
from service.api.schemas import JobPublic
from service.api.workers import PredictionWorkers
from service.context import Store

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=[ReadAccess])


def _public(job: Job) -> JobPublic:
    return JobPublic(job_id=job.job_id, kind=job.kind, device=job.device, status=job.status,  # type: ignore[arg-type]
                     created_at=job.created_at, finished_at=job.finished_at, result=job.result, error=job.error)


def _train(store: Store, predictions: PredictionWorkers, device_name: str) -> Any:
    # Imported when a job runs, not at app start: training pulls in LightGBM.
    from predictor.training import train_device as fit_device

    with session_scope(store.sessions) as session:
        result, overhead = fit_device(session, get_device(session, device_name))
    predictions.invalidate_device(device_name)
    logger.info("retrained regressors and overhead of device %r: %s", device_name, overhead)
    return result


@router.post("/devices/{name}/train", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED,
             dependencies=[WriteAccess], responses={404: {"description": "unknown device"}})
def train_device(name: str, session: SessionDep, store: StoreDep, predictions: PredictionsDep,
                 jobs: JobsDep) -> JobPublic:
    """Refit the device's overhead, retrain its per-op-type regressors in the background; poll /api/jobs/{job_id}."""
    get_device(session, name)
    job = jobs.submit("train", name, lambda: _train(store, predictions, name))
    return JobPublic(job_id=job.job_id, kind=job.kind, device=job.device, status="queued",
                     created_at=job.created_at)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses={404: {"description": "unknown job"}})
def read_job(job_id: str, jobs: JobsDep) -> JobPublic:
    """A job's state: queued, running, finished (with its result) or failed (with its error)."""
    job = jobs.get(job_id)
    if job is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND,
                            detail=f"unknown job {job_id!r} (jobs live in the worker that started them)")
    return _public(job)
