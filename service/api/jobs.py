"""Jobs as the API answers them: the store's job records, with results turned into plain JSON values."""
from __future__ import annotations

import dataclasses
import math
from datetime import datetime
from typing import Any

from predictor.store import JobRecord
from service.api.schemas import JobPublic

__all__ = ["job_public", "to_jsonable"]


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


def job_public(job: JobRecord) -> JobPublic:
    """The API's view of a job record."""
    return JobPublic(job_id=job.job_id, kind=job.kind, device=job.device, status=job.status,  # type: ignore[arg-type]
                     created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                     attempts=job.attempts, worker=job.worker, result=job.result, error=job.error)
