"""API versions: every route answers under /api/v1 (documented) and under /api (the same handlers, left out of the
OpenAPI document), so agents and scripts written against /api keep working."""
from __future__ import annotations

from fastapi import APIRouter, FastAPI

__all__ = ["API_PREFIX", "LEGACY_API_PREFIX", "include_versioned", "unversioned_path"]

API_PREFIX = "/api/v1"
LEGACY_API_PREFIX = "/api"


def include_versioned(app: FastAPI, router: APIRouter) -> None:
    """Mount `router` under API_PREFIX, and again under LEGACY_API_PREFIX without documenting it twice."""
    app.include_router(router, prefix=API_PREFIX)
    app.include_router(router, prefix=LEGACY_API_PREFIX, include_in_schema=False)


def unversioned_path(path: str) -> str:
    """The path as the unversioned alias spells it: /api/v1/predict -> /api/predict; other paths unchanged.

    The request limits state their rules once, in these terms (service.api.limits).
    """
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        return LEGACY_API_PREFIX + path[len(API_PREFIX):]
    return path
