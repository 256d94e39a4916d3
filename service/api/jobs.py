"""Jobs as the API answers them: the store's job records (their results are JSON already: service.worker)."""
from __future__ import annotations

from predictor.store import JobRecord
from service.api.schemas import JobPublic

__all__ = ["job_public"]


def job_public(job: JobRecord) -> JobPublic:
    """The API's view of a job record."""
    return JobPublic(job_id=job.job_id, kind=job.kind, device=job.device, status=job.status,  # type: ignore[arg-type]
                     created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                     attempts=job.attempts, worker=job.worker, result=job.result, error=job.error)
