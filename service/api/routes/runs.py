"""Profiling runs, recorded by remote profiler agents: start one, then finish or kill it with a report."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from predictor.store import finish_run, get_device, list_runs, start_run
from service.api.deps import PredictionsDep, ReadAccess, SessionDep, WriteAccess
from service.api.schemas import RunCreate, RunFinish, RunPublic

__all__ = ["router"]

router = APIRouter(prefix="/devices/{name}/runs", tags=["runs"], dependencies=[ReadAccess])


@router.get("", response_model=list[RunPublic])
def read_runs(name: str, session: SessionDep) -> list[RunPublic]:
    """The device's runs, oldest first."""
    return [RunPublic.model_validate(run) for run in list_runs(session, get_device(session, name))]


@router.post("", response_model=RunPublic, status_code=status.HTTP_201_CREATED, dependencies=[WriteAccess])
def create_run(name: str, body: RunCreate, session: SessionDep) -> RunPublic:
    """Record a running run; idempotent (an existing run id of this device is returned unchanged)."""
    device = get_device(session, name)
    try:
        run = start_run(session, device, body.run_id, body.budget_minutes)
    except ValueError as exc:
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from exc
    public = RunPublic.model_validate(run)
    session.commit()
    return public


@router.put("/{run_id}", response_model=RunPublic, dependencies=[WriteAccess],
            responses={404: {"description": "unknown device or run"}})
def update_run(name: str, run_id: str, body: RunFinish, session: SessionDep,
               predictions: PredictionsDep) -> RunPublic:
    """Finish or kill a run and attach its report (flat axes in it change predictions: cache dropped)."""
    device = get_device(session, name)
    if not any(run.run_id == run_id for run in list_runs(session, device)):
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND,
                            detail=f"unknown run {run_id!r} on device {name!r}; start it with POST first")
    run = finish_run(session, run_id, body.status, body.report)
    public = RunPublic.model_validate(run)
    session.commit()
    predictions.invalidate_device(name)
    return public
