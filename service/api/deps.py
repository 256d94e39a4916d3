"""Dependencies of the routes: settings, store, sessions, caches, jobs and bearer-token checks."""
from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.database import StoreConnector
from service.api.jobs import JobRegistry
from service.api.predictions import PredictionCache
from service.context import Store
from service.settings import Settings

__all__ = [
    "CacheDep",
    "JobsDep",
    "ReadAccess",
    "SessionDep",
    "SettingsDep",
    "StoreDep",
    "WriteAccess",
    "get_db",
    "require_read_token",
    "require_write_token",
]

_bearer = HTTPBearer(auto_error=False, description="a token listed in LATPRED_API_TOKENS")
CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_store(request: Request) -> Store:
    """The app's store, opened on first use; StoreError (503) while the database is unreachable."""
    connector: StoreConnector = request.app.state.store_connector
    return connector.get()


StoreDep = Annotated[Store, Depends(get_store)]


def get_db(store: StoreDep) -> Iterator[Session]:
    """A session per request; routes that write commit explicitly before answering."""
    with store.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def get_prediction_cache(request: Request) -> PredictionCache:
    cache: PredictionCache = request.app.state.prediction_cache
    return cache


CacheDep = Annotated[PredictionCache, Depends(get_prediction_cache)]


def get_jobs(request: Request) -> JobRegistry:
    jobs: JobRegistry = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobRegistry, Depends(get_jobs)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail=detail,
                         headers={"WWW-Authenticate": "Bearer"})


def _check_token(settings: Settings, credentials: HTTPAuthorizationCredentials | None, action: str) -> None:
    tokens = settings.tokens
    if not tokens:
        raise _unauthorized(f"{action} is disabled: LATPRED_API_TOKENS is not set on the server")
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise _unauthorized(f"{action} needs an 'Authorization: Bearer <token>' header")
    offered = credentials.credentials.encode()
    # Compare against every token (no early exit) so timing says nothing about which one nearly matched.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token.encode())
    if not matched:
        raise _unauthorized("invalid token")


def require_write_token(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Writes always need a configured token (secure by default)."""
    _check_token(settings, credentials, "writing")


def require_read_token(settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Reads are open unless LATPRED_READ_TOKEN_REQUIRED is set."""
    if settings.read_token_required:
        _check_token(settings, credentials, "reading")


WriteAccess = Depends(require_write_token)
ReadAccess = Depends(require_read_token)
