"""The API router: every route module mounted in one place (under /api/v1 and /api, service.api.versions)."""
from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import devices, health, jobs, measurements, models, predict, runs
from service.api.schemas import ProblemPublic, ValidationProblemPublic

__all__ = ["api_router"]

# Documents the 422 body the error handlers really send, and the answers of the request limits every operation
# may meet (service.api.limits). Every error answer is problem+json: service.api.openapi documents it so.
api_router = APIRouter(responses={
    422: {"model": ValidationProblemPublic, "description": "invalid request"},
    401: {"model": ProblemPublic, "description": "a token is needed (writes; reads with LATPRED_READ_TOKEN_REQUIRED)"},
    413: {"model": ProblemPublic, "description": "the JSON body is larger than LATPRED_MAX_BODY_MB"},
    429: {"model": ProblemPublic, "description": "too many requests without a token from this address (Retry-After)"},
})
api_router.include_router(health.router)
api_router.include_router(devices.router)
api_router.include_router(measurements.router)
api_router.include_router(runs.router)
api_router.include_router(jobs.router)
api_router.include_router(models.router)
api_router.include_router(predict.router)
