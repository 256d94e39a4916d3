"""One place that turns library errors into HTTP answers: a status and a one-line detail, never a traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from predictor.devices import UnreproducibleKernelsError
from predictor.errors import (
    ConfigError,
    DeviceConflictError,
    InvalidModelError,
    LatpredError,
    NoMeasurementsError,
    StoreError,
    UnknownDeviceError,
    UnsupportedKernelError,
)
from service.api.model_store import ModelNotFoundError

__all__ = ["describe_error", "install_error_handlers", "one_line", "status_for"]

logger = logging.getLogger(__name__)

# Most specific first: the first class the error is an instance of decides the status.
_STATUS_BY_ERROR: tuple[tuple[type[LatpredError], int], ...] = (
    (UnknownDeviceError, 404),
    (ModelNotFoundError, 404),
    (NoMeasurementsError, 409),
    (DeviceConflictError, 409),
    (UnreproducibleKernelsError, 422),
    (InvalidModelError, 422),
    (ConfigError, 422),
    (UnsupportedKernelError, 422),
    (StoreError, 503),
)
_DEFAULT_LIBRARY_STATUS = 400
_MAX_DETAIL_CHARS = 2000
_MAX_LISTED_ERRORS = 50


def status_for(error: LatpredError) -> int:
    """The HTTP status of a library error."""
    for error_type, status in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return _DEFAULT_LIBRARY_STATUS


def one_line(message: object) -> str:
    """A message as one line of at most _MAX_DETAIL_CHARS characters (what every error answer holds)."""
    text = " ".join(str(message).split())
    return text[:_MAX_DETAIL_CHARS]


def _database_detail(exc: Exception) -> str:
    return f"database unreachable: {one_line(getattr(exc, 'orig', None) or exc)}"


def _unstorable_detail(exc: Exception) -> str:
    # The database refused a value from the request (a NUL character in text, a number out of the column's
    # range): bad input, not a server fault. The driver's first line names the problem, never the SQL.
    orig = getattr(exc, "orig", None) or exc
    first_line = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    return f"the request holds a value the database cannot store: {one_line(first_line)}"


def describe_error(exc: Exception) -> tuple[int, str] | None:
    """The status and one-line detail the API answers for an expected error; None for anything unexpected.

    The handlers below answer with it, and so do the prediction workers (service.api.workers), which send it
    back instead of the exception itself.
    """
    if isinstance(exc, LatpredError):
        return status_for(exc), one_line(exc)
    if isinstance(exc, ModelNotFoundError):
        return 404, one_line(exc)
    if isinstance(exc, OperationalError | InterfaceError):
        return 503, _database_detail(exc)
    if isinstance(exc, DataError):
        return 422, _unstorable_detail(exc)
    return None


async def _latpred_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LatpredError)
    status = status_for(exc)
    if status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": one_line(exc)}, status_code=status)


async def _model_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": one_line(exc)}, status_code=404)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: database unreachable: %s", request.method, request.url.path,
                   getattr(exc, "orig", None) or exc)
    return JSONResponse({"detail": _database_detail(exc)}, status_code=503)


async def _unstorable_value(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": _unstorable_detail(exc)}, status_code=422)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if part != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    messages = [f"{_location(tuple(error.get('loc', ())))}: {error.get('msg', 'invalid')}" for error in errors[:5]]
    if len(errors) > 5:
        messages.append(f"... ({len(errors) - 5} more)")
    # `detail` is one readable line for humans and clients; `errors` keeps pydantic's structured list.
    # At most _MAX_LISTED_ERRORS: a batch of 100,000 bad rows must not answer with 100,000 errors.
    safe_errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                   for e in errors[:_MAX_LISTED_ERRORS]]
    return JSONResponse({"detail": one_line("; ".join(messages)), "errors": safe_errors}, status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, RecursionError):
        # FastAPI's JSON parser gave up on a body nested ~1,000 levels deep; FastAPI says "error parsing the body".
        return JSONResponse({"detail": "the JSON body is nested too deeply to parse"}, status_code=422)
    return await http_exception_handler(request, exc)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("%s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error; see the service log"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: library errors by subclass, outages 503, unstorable values 422, anything else 500."""
    app.add_exception_handler(LatpredError, _latpred_error)
    app.add_exception_handler(ModelNotFoundError, _model_not_found)
    app.add_exception_handler(OperationalError, _database_error)
    app.add_exception_handler(InterfaceError, _database_error)
    app.add_exception_handler(DataError, _unstorable_value)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
