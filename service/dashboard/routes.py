"""Dashboard routes: HTML pages at /, /devices/{name} and /models; chart data as JSON under /api/dashboard."""
from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from predictor.errors import UnknownDeviceError
from predictor.estimation.estimate import flat_axes_of
from predictor.store import (
    Device,
    coverage_rows,
    get_device,
    get_stored_model,
    list_devices,
    list_regressor_metrics,
    list_runs,
    list_validations,
    read_tallies,
    sample_kernel_points,
    shape_counts,
    summarize_device,
)
from service.api.deps import ReadAccess, SessionDep, SettingsDep
from service.dashboard.charts import (
    kernel_points,
    latency_vs_macs,
    op_coverage,
    regressor_accuracy,
    run_flags,
    speedup_by_bits,
    speedup_by_sparsity,
    validation_summary,
)
from service.dashboard.pages import (
    DeviceOverview,
    LastRun,
    ModelOption,
    render_device,
    render_devices,
    render_error,
    render_models,
)

__all__ = ["MAX_SCATTER_POINTS", "chart_router", "page_router"]

logger = logging.getLogger(__name__)

# Beyond this many points a scatter is a blob and the page slows down; the series are thinned evenly.
MAX_SCATTER_POINTS = 4000
# Kernels the speedup charts are computed from: every kernel of a sample of the device's shapes (all of a small
# table), read in SQL; a device of a million kernels is charted as fast as one of twenty thousand.
MAX_CHART_KERNELS = 20_000
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

page_router = APIRouter(include_in_schema=False)
chart_router = APIRouter(prefix="/dashboard", tags=["dashboard"], dependencies=[ReadAccess])


def _reads_closed(read_token_required: bool) -> HTMLResponse | None:
    """Browsers send no bearer token on navigation: with token-protected reads the pages stay closed."""
    if not read_token_required:
        return None
    return HTMLResponse(render_error("Dashboard unavailable", "This server requires a token for reads "
                                     "(LATPRED_READ_TOKEN_REQUIRED), so the dashboard pages are disabled; use the "
                                     "REST API with a bearer token."), status_code=401)


def _overview(session: Session, device: Device) -> DeviceOverview:
    """What the devices page shows of a device: its summary (counts from its tallies, its runs and regressors
    without their reports and model texts) and its validations."""
    summary = summarize_device(session, device)
    last = summary.last_run
    return DeviceOverview(
        name=device.name,
        backend=device.backend,
        execution_provider=device.execution_provider,
        runtime_version=device.runtime_version,
        threads=device.threads,
        host=device.host,
        created_at=device.created_at,
        measurements=summary.measurement_count,
        op_types=summary.op_types,
        accuracy=regressor_accuracy(summary.regressors),
        last_run=LastRun(last.run_id, last.status, last.started_at, last.finished_at) if last else None,
        runs=summary.run_count,
        validations=validation_summary(list_validations(session, device)),
    )


@page_router.get("/", response_class=HTMLResponse)
def devices_page(session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """Every device with its runtime, table size, op types, last run and regressor accuracy."""
    closed = _reads_closed(settings.read_token_required)
    if closed is not None:
        return closed
    return HTMLResponse(render_devices([_overview(session, device) for device in list_devices(session)]))


# `:path`: a name with a slash (possible through the library, not the API) still has a page.
@page_router.get("/devices/{name:path}", response_class=HTMLResponse)
def device_page(name: str, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """One device: coverage per op type, latency charts, validation scatter, runs with drift flags."""
    closed = _reads_closed(settings.read_token_required)
    if closed is not None:
        return closed
    try:
        device = get_device(session, name)
    except UnknownDeviceError:
        return HTMLResponse(render_error("Unknown device", f"There is no device named {name!r}."), status_code=404)
    overview = _overview(session, device)
    # Aggregates in SQL over the device's measured kernels (one row per key, kept by uploads): no row is read.
    coverage = op_coverage(read_tallies(session, device.id), coverage_rows(session, device.id),
                           shape_counts(session, device.id), list_regressor_metrics(session, device),
                           flat_axes_of(session, device))
    runs = list_runs(session, device)
    run_times = {run.run_id: (run.started_at, run.finished_at) for run in runs}
    kernels = sum(row["kernels"] for row in coverage)
    return HTMLResponse(render_device(overview, coverage, run_flags(runs), run_times, kernels=kernels))


@page_router.get("/models", response_class=HTMLResponse)
def models_page(session: SessionDep, settings: SettingsDep,
                model: Annotated[str | None, Query(description="preselected model id")] = None) -> HTMLResponse:
    """Upload or pick a model, choose a device and candidate configs, rank them, inspect the kernels.

    The page lists no uploaded models: an id is all a question needs, and the page is open. It offers the model
    named by `?model=` (whoever has the id may use it), the one just uploaded, and, to token holders, the list
    GET /api/models returns (loaded by the page's script with the token typed in).
    """
    closed = _reads_closed(settings.read_token_required)
    if closed is not None:
        return closed
    stored = get_stored_model(session, model) if model is not None and _SHA256_HEX.fullmatch(model) else None
    models = [] if stored is None or stored.kernels is None else [
        ModelOption(id=stored.id, name=stored.name, size_bytes=stored.size_bytes, kernels=len(stored.kernels),
                    created_at=stored.created_at)]
    devices = [device.name for device in list_devices(session)]
    return HTMLResponse(render_models(models, devices, selected_model=model))


@chart_router.get("/devices/{name:path}/charts", responses={404: {"description": "unknown device"}})
def device_charts(name: str, session: SessionDep) -> dict[str, Any]:
    """Chart data of a device: latency vs MACs, speedup by bit-width and by sparsity, validation points.

    Large tables are charted from a sample of whole kernel shapes (`sample_share` says how much of them).
    """
    device = get_device(session, name)
    sample = sample_kernel_points(session, device.id, MAX_CHART_KERNELS)
    points = kernel_points(sample.points)
    return {
        "device": device.name,
        "kernels": sample.kernels,
        # Below 1: the speedups come from every kernel of this share of the device's kernel shapes.
        "sample_share": sample.share,
        "latency_vs_macs": latency_vs_macs(points, MAX_SCATTER_POINTS, total=sample.plottable),
        "bits": speedup_by_bits(points),
        "sparsity": speedup_by_sparsity(points),
        "validation": validation_summary(list_validations(session, device)),
    }
