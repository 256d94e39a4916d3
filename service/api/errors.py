"""One place that turns errors into HTTP answers: problem+json (service.api.problems) with a status, a code and a
one-line detail, never a traceback."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from predictor.errors import (
    ConfigError,
    DeviceConflictError,
    InvalidModelError,
    InvalidRecordError,
    LatpredError,
    NoMeasurementsError,
    StoreError,
    UnknownDeviceError,
    UnknownRunError,
    UnsupportedKernelError,
)
from predictor.runtime.devices import UnreproducibleKernelsError
from predictor.store import RunClosedError
from service.api.model_store import ModelNotFoundError
from service.api.problems import HTTPProblem, Problem, ProblemCode, ProblemResponse, code_for_status
from service.api.uploads import BadUploadError, UploadTooLargeError

__all__ = ["describe_error", "install_error_handlers", "one_line"]

logger = logging.getLogger(__name__)

# Errors raised on purpose, by class: the first class the error is an instance of decides the answer, so the
# specific ones come first and LatpredError (the root, whatever else is moved under it) last.
_ANSWER_BY_ERROR: tuple[tuple[type[Exception], int, ProblemCode], ...] = (
    (ModelNotFoundError, 404, ProblemCode.UNKNOWN_MODEL),
    (UnknownDeviceError, 404, ProblemCode.UNKNOWN_DEVICE),
    (UnknownRunError, 404, ProblemCode.UNKNOWN_RUN),
    (NoMeasurementsError, 409, ProblemCode.NO_MEASUREMENTS),
    (DeviceConflictError, 409, ProblemCode.DEVICE_CONFLICT),
    (RunClosedError, 409, ProblemCode.RUN_CLOSED),
    (UploadTooLargeError, 413, ProblemCode.BODY_TOO_LARGE),
    (BadUploadError, 422, ProblemCode.INVALID_UPLOAD),
    (UnreproducibleKernelsError, 422, ProblemCode.UNREPRODUCIBLE_KERNELS),
    (InvalidModelError, 422, ProblemCode.INVALID_MODEL),
    (ConfigError, 422, ProblemCode.INVALID_CONFIG),
    (UnsupportedKernelError, 422, ProblemCode.UNSUPPORTED_KERNEL),
    (InvalidRecordError, 422, ProblemCode.INVALID_RECORD),
    (StoreError, 503, ProblemCode.DATABASE_UNAVAILABLE),
    (LatpredError, 400, ProblemCode.BAD_REQUEST),
)
_MAX_DETAIL_CHARS = 2000
_MAX_LISTED_ERRORS = 50
_MAX_ERRORS_IN_DETAIL = 5


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


def describe_error(exc: Exception) -> Problem | None:
    """The answer to an expected error; None for anything unexpected (a 500).

    The handlers below answer with it, and so do the prediction workers (service.api.workers), which send it
    back instead of the exception itself.
    """
    for error_type, status, code in _ANSWER_BY_ERROR:
        if isinstance(exc, error_type):
            return Problem(status, code, one_line(exc))
    if isinstance(exc, OperationalError | InterfaceError):
        return Problem(503, ProblemCode.DATABASE_UNAVAILABLE, _database_detail(exc))
    if isinstance(exc, DataError):
        return Problem(422, ProblemCode.UNSTORABLE_VALUE, _unstorable_detail(exc))
    return None


async def _known_error(request: Request, exc: Exception) -> Response:
    problem = describe_error(exc)
    if problem is None:
        return await _unexpected_error(request, exc)
    if problem.status >= 500:
        logger.warning("%s %s: %s", request.method, request.url.path, getattr(exc, "orig", None) or exc)
    return ProblemResponse.of(problem, request.url.path)


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(part) for part in loc if part != "body"]
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else (f".{part}" if text else part)
    return text or "body"


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    messages = [f"{_location(tuple(error.get('loc', ())))}: {error.get('msg', 'invalid')}"
                for error in errors[:_MAX_ERRORS_IN_DETAIL]]
    if len(errors) > _MAX_ERRORS_IN_DETAIL:
        messages.append(f"... ({len(errors) - _MAX_ERRORS_IN_DETAIL} more)")
    # Compression configs are checked by the request's schema (service.api.schemas): the same mistake has the same
    # code whether the schema or the library (a layer pattern no node matches) finds it.
    only_configs = bool(errors) and all(error.get("type") == ProblemCode.INVALID_CONFIG.value for error in errors)
    code = ProblemCode.INVALID_CONFIG if only_configs else ProblemCode.VALIDATION_ERROR
    # `detail` is one readable line for humans and clients; `errors` keeps pydantic's structured list.
    # At most _MAX_LISTED_ERRORS: a batch of 100,000 bad rows must not answer with 100,000 errors.
    field_errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
                    for e in errors[:_MAX_LISTED_ERRORS]]
    return ProblemResponse.of(Problem(422, code, one_line("; ".join(messages))), request.url.path,
                              errors=field_errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, RecursionError):
        # FastAPI's JSON parser gave up on a body nested ~1,000 levels deep; FastAPI says "error parsing the body".
        problem = Problem(422, ProblemCode.VALIDATION_ERROR, "the JSON body is nested too deeply to parse")
        return ProblemResponse.of(problem, request.url.path)
    if exc.status_code in (204, 304):  # no body allowed (as Starlette's own handler answers them)
        return Response(status_code=exc.status_code, headers=exc.headers)
    code = exc.code if isinstance(exc, HTTPProblem) else code_for_status(exc.status_code)
    return ProblemResponse.of(Problem(exc.status_code, code, one_line(exc.detail)), request.url.path,
                              headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.exception("%s %s failed", request.method, request.url.path)
    return ProblemResponse.of(Problem(500, ProblemCode.INTERNAL_ERROR, "internal server error; see the service log"),
                              request.url.path)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers: errors raised on purpose by class, outages 503, unstorable values 422, invalid requests
    422 with their field errors, HTTP exceptions with their status, anything else 500."""
    for error_type, _status, _code in _ANSWER_BY_ERROR:
        app.add_exception_handler(error_type, _known_error)
    for error_type in (OperationalError, InterfaceError, DataError):
        app.add_exception_handler(error_type, _known_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
