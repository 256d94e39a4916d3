"""Devices: list, register (upsert) and read one with its table size, regressors and runs."""
from __future__ import annotations

from fastapi import APIRouter, status

from predictor.store import get_device, list_devices, list_runs, register_device, summarize_device
from service.api.deps import ReadAccess, SessionDep, WriteAccess
from service.api.schemas import (
    DeviceCreate,
    DeviceDetail,
    DevicePublic,
    DevicesPublic,
    RegressorPublic,
    RunPublic,
)

__all__ = ["router"]

router = APIRouter(prefix="/devices", tags=["devices"], dependencies=[ReadAccess])


@router.get("", response_model=DevicesPublic)
def read_devices(session: SessionDep) -> DevicesPublic:
    """All devices, ordered by name."""
    devices = [DevicePublic.model_validate(device) for device in list_devices(session)]
    return DevicesPublic(data=devices, count=len(devices))


@router.post("", response_model=DevicePublic, status_code=status.HTTP_201_CREATED, dependencies=[WriteAccess],
             responses={409: {"description": "the name is registered with another runtime or kernel profile"}})
def create_device(body: DeviceCreate, session: SessionDep) -> DevicePublic:
    """Register a device; registering it again with the same runtime is a no-op, with another one a 409."""
    device = register_device(session, **body.model_dump())
    public = DevicePublic.model_validate(device)
    session.commit()
    return public


@router.get("/{name}", response_model=DeviceDetail, responses={404: {"description": "unknown device"}})
def read_device(name: str, session: SessionDep) -> DeviceDetail:
    """One device with measurement counts and regressor metrics per op type, and its profiling runs."""
    summary = summarize_device(session, get_device(session, name))
    device = summary.device
    regressors = {
        op_type: RegressorPublic(op_type=op_type, metrics=regressor.metrics or {},
                                 data_version=regressor.data_version, trained_at=regressor.trained_at)
        for op_type, regressor in summary.regressors.items()
    }
    runs = [RunPublic.model_validate(run) for run in list_runs(session, device)]
    return DeviceDetail(
        **DevicePublic.model_validate(device).model_dump(),
        measurement_count=summary.measurement_count,
        measurements=summary.measurements_by_op,
        regressors=regressors,
        runs=runs,
    )
