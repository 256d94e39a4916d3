"""The /api router: every route module mounted in one place."""
from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import devices, health, jobs, measurements, models, predict, runs
from service.api.schemas import ValidationErrorPublic

__all__ = ["api_router"]

# Documents the 422 body the error handlers really send (FastAPI's default says `detail` is a list).
api_router = APIRouter(responses={422: {"model": ValidationErrorPublic, "description": "invalid request"}})
api_router.include_router(health.router)
api_router.include_router(devices.router)
api_router.include_router(measurements.router)
api_router.include_router(runs.router)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(predict.router)
