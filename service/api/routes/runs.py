"""Profiling runs, recorded by remote profiler agents: start one, then finish or kill it with a report."""
from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, status

from predictor.errors import InvalidRecordError
from predictor.records import RunReport
from predictor.store import RunClosedError, finish_run, get_device, list_runs, start_run
from service.api.deps import ReadAccess, SessionDep, SettingsDep, WriteAccess
from service.api.problems import HTTPProblem, ProblemCode
from service.api.schemas import RunCreate, RunFinish, RunPublic

__all__ = ["router"]

router = APIRouter(prefix="/devices/{name}/runs", tags=["runs"], dependencies=[ReadAccess])


@router.get("", response_model=list[RunPublic])
def read_runs(name: str, session: SessionDep) -> list[RunPublic]:
    """The device's runs, oldest first."""
    return [RunPublic.model_validate(run) for run in list_runs(session, get_device(session, name))]


@router.post("", response_model=RunPublic, status_code=status.HTTP_201_CREATED, dependencies=[WriteAccess],
             responses={404: {"description": "unknown device"},
                        409: {"description": "the run id belongs to another device"}})
def create_run(name: str, body: RunCreate, session: SessionDep) -> RunPublic:
    """Record a running run; idempotent (an existing run id of this device is returned unchanged)."""
    device = get_device(session, name)
    try:
        run = start_run(session, device, body.run_id, body.budget_minutes, runtime=body.runtime, host=body.host)
    except ValueError as exc:
        raise HTTPProblem(status.HTTP_409_CONFLICT, ProblemCode.RUN_CONFLICT, str(exc)) from exc
    public = RunPublic.model_validate(run)
    session.commit()
    return public


def _check_report(report: dict[str, Any] | None, max_kb: float) -> None:
    """422 when the report is not a run report this server reads (predictor.records.RunReport, of a known version),
    not plain JSON (NaN, infinity) or larger than the limit: every device read returns it."""
    if report is None:
        return
    try:
        size_bytes = len(json.dumps(report, allow_nan=False, separators=(",", ":")))
    except ValueError as exc:
        raise HTTPProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, ProblemCode.INVALID_REPORT,
                          f"report: not plain JSON ({exc})") from exc
    if size_bytes > max_kb * 1024:
        raise HTTPProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, ProblemCode.INVALID_REPORT,
                          f"report: {size_bytes / 1024:.0f} KB as JSON, over the limit of {max_kb:g} KB of "
                          "this server (LATPRED_MAX_RUN_REPORT_KB)")
    try:
        RunReport.from_dict(report)
    except InvalidRecordError as exc:
        raise HTTPProblem(status.HTTP_422_UNPROCESSABLE_CONTENT, ProblemCode.INVALID_REPORT, str(exc)) from exc


@router.put("/{run_id}", response_model=RunPublic, dependencies=[WriteAccess],
            responses={404: {"description": "unknown device or run"},
                       409: {"description": "the run was finished or killed already, with another report"},
                       422: {"description": "the report is not a run report of a known version, or larger "
                                              "than LATPRED_MAX_RUN_REPORT_KB"}})
def update_run(name: str, run_id: str, body: RunFinish, session: SessionDep, settings: SettingsDep) -> RunPublic:
    """Finish or kill a run and attach its report (flat axes in it change predictions: cached predictors re-read it).

    A finished or killed run is final: the same request again answers the run unchanged, another one is a 409.
    """
    device = get_device(session, name)
    if not any(run.run_id == run_id for run in list_runs(session, device)):
        raise HTTPProblem(status.HTTP_404_NOT_FOUND, ProblemCode.UNKNOWN_RUN,
                          f"unknown run {run_id!r} on device {name!r}; start it with POST first")
    _check_report(body.report, settings.max_run_report_kb)
    try:
        run = finish_run(session, run_id, body.status, body.report)
    except RunClosedError as exc:
        raise HTTPProblem(status.HTTP_409_CONFLICT, ProblemCode.RUN_CLOSED, str(exc)) from exc
    public = RunPublic.model_validate(run)
    session.commit()
    return public
