"""The REST API: JSON under /api/v1 (and /api), layered as routes -> deps -> predictor library."""
from __future__ import annotations

from service.api.main import api_router

__all__ = ["api_router"]
