"""A device as every listing shows it: its table size per op type, its regressors' metrics, its run count and
latest run, read without a measurement row, a run report or a regressor's model text.

The one device-summary query behind `latpred devices`, `GET /api/v1/devices/{name}` and the dashboard's pages.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from predictor.store.crud import (
    RegressorMetrics,
    RunSummary,
    count_measurements_by_op,
    list_regressor_metrics,
    summarize_runs,
)
from predictor.store.models import Device

__all__ = ["DeviceSummary", "summarize_device"]


@dataclass(frozen=True)
class DeviceSummary:
    """A device with its measurement rows per op type, regressors (metrics only) by op type and runs."""

    device: Device
    measurements_by_op: dict[str, int]
    regressors: dict[str, RegressorMetrics]
    run_count: int
    last_run: RunSummary | None

    @property
    def measurement_count(self) -> int:
        return sum(self.measurements_by_op.values())

    @property
    def op_types(self) -> list[str]:
        return sorted(self.measurements_by_op)


def summarize_device(session: Session, device: Device) -> DeviceSummary:
    """The device's summary from its tallies, its regressors' metrics and its runs' count and latest."""
    run_count, last_run = summarize_runs(session, device)
    return DeviceSummary(device=device, measurements_by_op=count_measurements_by_op(session, device),
                         regressors=list_regressor_metrics(session, device), run_count=run_count, last_run=last_run)
