"""The web dashboard: server-rendered pages over the store, charts drawn in the browser by a vendored Chart.js.

No build step: the pages are HTML from `pages`, the scripts and styles are plain files in service/static.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.api.versions import include_versioned
from service.dashboard.routes import chart_router, page_router

__all__ = ["STATIC_DIR", "install_dashboard"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def install_dashboard(app: FastAPI) -> None:
    """Mount the pages at /, their chart data under /api/v1/dashboard (and /api/dashboard) and the static files at
    /static."""
    include_versioned(app, chart_router)
    app.include_router(page_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
