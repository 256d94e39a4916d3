"""Background jobs (regressor training) run by a small thread pool; their states live in this process only.

Limitation: the registry is an in-process dict, so a job id is only known to the worker that started it
and is lost on restart. With several uvicorn workers, poll the same worker (or read the device's
regressors, which are in the store) instead.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from predictor.store.models import utc_now

__all__ = ["Job", "JobRegistry", "to_jsonable"]

logger = logging.getLogger(__name__)

_MAX_KEPT_JOBS = 1000


@dataclass
class Job:
    job_id: str
    kind: str
    device: str
    status: str = "queued"
    created_at: datetime = field(default_factory=utc_now)
    finished_at: datetime | None = None
    result: Any = None
    error: str | None = None


def to_jsonable(value: Any) -> Any:
    """Turn a job result (dicts, dataclasses, numpy scalars, objects with to_dict) into plain JSON values."""
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


class JobRegistry:
    """Runs jobs one at a time in a worker thread and remembers the last `_MAX_KEPT_JOBS` of them."""

    def __init__(self, max_workers: int = 1) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="latpred-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, device: str, work: Callable[[], Any]) -> Job:
        """Queue `work`; its return value becomes the job's result, an exception its error."""
        job = Job(job_id=uuid.uuid4().hex, kind=kind, device=device)
        with self._lock:
            self._jobs[job.job_id] = job
            while len(self._jobs) > _MAX_KEPT_JOBS:
                self._jobs.popitem(last=False)
        self._executor.submit(self._run, job, work)
        return job

    def _run(self, job: Job, work: Callable[[], Any]) -> None:
        with self._lock:
            job.status = "running"
        try:
            result = to_jsonable(work())
        except Exception as exc:
            logger.exception("job %s (%s on %r) failed", job.job_id, job.kind, job.device)
            with self._lock:
                job.status = "failed"
                job.error = " ".join(str(exc).split())[:2000] or type(exc).__name__
                job.finished_at = utc_now()
            return
        with self._lock:
            job.status = "finished"
            job.result = result
            job.finished_at = utc_now()

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            job = self._jobs.get(job_id)
            return None if job is None else dataclasses.replace(job)

    def shutdown(self) -> None:
        """Stop taking jobs; queued ones are cancelled, a running one finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
