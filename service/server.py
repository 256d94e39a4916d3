"""Serving the REST app with uvicorn (what `latpred serve` runs)."""
from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.settings import Settings, get_settings

__all__ = ["run_server"]

logger = logging.getLogger(__name__)


def run_server(host: str, port: int, settings: Settings | None = None) -> None:
    """Serve the API on host:port until interrupted; the store is the one named by the settings."""
    settings = settings or get_settings()
    app = create_app(settings)
    logger.info("serving latpred on http://%s:%d (docs at /docs)", host, port)
    uvicorn.run(app, host=host, port=port, log_level="warning")
