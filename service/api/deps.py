"""Dependencies of the routes: settings, store, sessions, prediction workers, model store and bearer-token checks."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.database import StoreConnector
from service.api.model_store import ModelStore
from service.api.problems import HTTPProblem, ProblemCode
from service.api.tokens import stored_verdict, token_error
from service.api.workers import PredictionWorkers
from service.context import Store
from service.settings import Settings

__all__ = [
    "ModelStoreDep",
    "PredictionsDep",
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


def get_predictions(request: Request) -> PredictionWorkers:
    predictions: PredictionWorkers = request.app.state.predictions
    return predictions


PredictionsDep = Annotated[PredictionWorkers, Depends(get_predictions)]


def get_model_store(request: Request) -> ModelStore:
    model_store: ModelStore = request.app.state.model_store
    return model_store


ModelStoreDep = Annotated[ModelStore, Depends(get_model_store)]


def _check_token(request: Request, settings: Settings, action: str) -> None:
    # The middleware judged the header already (service.api.limits); this reads its verdict.
    state = request.scope.setdefault("state", {})
    verdict = stored_verdict(state, settings, request.headers.get("authorization"))
    detail = token_error(verdict, action)
    if detail is not None:
        raise HTTPProblem(status.HTTP_401_UNAUTHORIZED, ProblemCode.UNAUTHORIZED, detail,
                          headers={"WWW-Authenticate": "Bearer"})


def require_write_token(request: Request, settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Writes always need a configured token (secure by default)."""
    _check_token(request, settings, "writing")


def require_read_token(request: Request, settings: SettingsDep, credentials: CredentialsDep) -> None:
    """Reads are open unless LATPRED_READ_TOKEN_REQUIRED is set."""
    if settings.read_token_required:
        _check_token(request, settings, "reading")


WriteAccess = Depends(require_write_token)
ReadAccess = Depends(require_read_token)
