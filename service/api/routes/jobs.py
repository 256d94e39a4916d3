"""Background regressor training: queued in the store by any service process, run by a `latpred worker`."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Path, status

from predictor.store import get_device, get_job, submit_job
from service.api.deps import ReadAccess, SessionDep, WriteAccess
from service.api.jobs import job_public
from service.api.problems import HTTPProblem, ProblemCode
from service.api.schemas import JobPublic

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=[ReadAccess])

JobId = Path(max_length=64, description="the job_id the job was queued with")


@router.post("/devices/{name}/train", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED,
             dependencies=[WriteAccess], responses={404: {"description": "unknown device"}})
def train_device(name: str, session: SessionDep) -> JobPublic:
    """Queue a refit of the device's overhead and a retraining of its per-op-type regressors; poll its job.

    Poll GET /api/v1/jobs/{job_id}. A `latpred worker` process runs it (`latpred serve` starts one unless told not to).
    """
    job = submit_job(session, "train", get_device(session, name))
    session.commit()
    logger.info("queued job %s: train %r", job.job_id, name)
    return job_public(job)


@router.get("/jobs/{job_id}", response_model=JobPublic, responses={404: {"description": "unknown job"}})
def read_job(session: SessionDep, job_id: str = JobId) -> JobPublic:
    """A job's state: queued, running, finished (with its result) or failed (with its error)."""
    job = get_job(session, job_id)
    if job is None:
        raise HTTPProblem(status.HTTP_404_NOT_FOUND, ProblemCode.UNKNOWN_JOB, f"unknown job {job_id!r}")
    return job_public(job)
