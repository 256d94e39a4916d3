"""The FastAPI application: REST API under /api/v1 (and /api), OpenAPI docs at /docs; one store per app."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from predictor.allocator import tune_allocator
from predictor.errors import StoreError
from predictor.runtime.optimizer import OptimizerLimits, optimizer_limits
from service.api import api_router
from service.api.database import StoreConnector
from service.api.errors import install_error_handlers
from service.api.limits import RequestLimitsMiddleware
from service.api.model_store import open_model_store
from service.api.openapi import OPENAPI_PATH, install_openapi
from service.api.versions import include_versioned
from service.api.workers import PredictionWorkers
from service.dashboard import install_dashboard
from service.settings import Settings, get_settings

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


class OptimizerLimitsMiddleware:
    """Every request runs the runtime's optimizer under the settings' limits, in a worker process.

    Uploaded models are untrusted: parsing them runs onnxruntime's optimizer (upload, predict, rank), so
    the limits are set here once for all routes; the thread pool's calls inherit them with the context.
    """

    def __init__(self, app: ASGIApp, limits: OptimizerLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with optimizer_limits(self.limits):
            await self.app(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the store is opened at start-up (or on the first request if the database is down).

    Run it with `latpred serve [--workers N]`, or `uvicorn --factory service.app:create_app [--workers N]`. The app
    keeps nothing another process needs: jobs and model bytes are in the store (or the configured model
    directory), and each process's cached predictors are checked against the store before each use. Jobs are run
    by `latpred worker` processes, not here.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tune_allocator()
        connector = StoreConnector(settings)
        app.state.settings = settings
        app.state.store_connector = connector
        app.state.predictions = PredictionWorkers(settings)
        app.state.model_store = open_model_store(settings)
        try:
            connector.get()
        except StoreError as exc:
            logger.warning("database unreachable at start-up, retrying on each request: %s", exc)
        if not settings.tokens:
            logger.warning("LATPRED_API_TOKENS is not set: every write to the API is refused")
        try:
            yield
        finally:
            app.state.predictions.shutdown()
            connector.close()

    app = FastAPI(
        title="latpred",
        summary="Hardware-aware latency prediction for compressed ONNX models",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url=OPENAPI_PATH,
    )
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(OptimizerLimitsMiddleware, limits=settings.optimizer_limits)
    # Added last, so it runs first: rate, token and body-size limits before any route reads a body.
    app.add_middleware(RequestLimitsMiddleware, settings=settings)
    include_versioned(app, api_router)
    install_dashboard(app)
    return app
