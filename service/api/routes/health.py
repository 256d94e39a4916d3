"""Liveness of the service and reachability of its database (open: load balancers need no token)."""
from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response

from service.api.database import StoreConnector
from service.api.schemas import HealthPublic

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_MAX_REASON_CHARS = 300


@router.get("/health", response_model=HealthPublic, responses={503: {"model": HealthPublic}})
def read_health(request: Request, response: Response) -> HealthPublic:
    """"ok" when a query on the database succeeds; 503 with the reason otherwise (recovers by itself)."""
    connector: StoreConnector = request.app.state.store_connector
    try:
        connector.ping()
    except Exception as exc:  # any failure means "not ready"; health itself must never answer 500
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:_MAX_REASON_CHARS]
        logger.warning("health check: database unreachable: %s", reason)
        response.status_code = 503
        return HealthPublic(status="degraded", database=f"unreachable: {reason}")
    return HealthPublic(status="ok", database="ok")
