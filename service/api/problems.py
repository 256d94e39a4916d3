"""Error answers as RFC 9457 problem details: `application/problem+json` with type, title, status, detail, code.

`code` is the machine-readable part (a client branches on it, never on `detail`); `type` is the same code as a
URI (a tag URI: RFC 9457 asks for a URI and none of ours is meant to be fetched); `title` is fixed per code;
`detail` is the one readable line the API always answered with; `instance` is the request's path. Every error
answer is built here: the exception handlers (service.api.errors), the request limits (service.api.limits)
and the prediction workers' answers (service.api.workers).
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "HTTPProblem",
    "Problem",
    "ProblemCode",
    "ProblemResponse",
    "code_for_status",
    "problem_type",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "tag:latpred,2026:problem:"


class ProblemCode(enum.StrEnum):
    """Every `code` an error answer may carry (docs/rest.md lists them with their statuses)."""

    # By status, where nothing more specific applies.
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    VALIDATION_ERROR = "validation_error"
    INTERNAL_ERROR = "internal_error"
    UNAVAILABLE = "unavailable"
    HTTP_ERROR = "http_error"
    # Request limits (service.api.limits, the model upload, the prediction workers).
    BODY_TOO_LARGE = "body_too_large"
    RATE_LIMITED = "rate_limited"
    BUSY = "busy"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CLIENT_CLOSED_REQUEST = "client_closed_request"
    SHUTTING_DOWN = "shutting_down"
    WORKER_DIED = "worker_died"
    # What was asked for is not there.
    UNKNOWN_DEVICE = "unknown_device"
    UNKNOWN_MODEL = "unknown_model"
    UNKNOWN_RUN = "unknown_run"
    UNKNOWN_JOB = "unknown_job"
    # The store's state refuses the request.
    NO_MEASUREMENTS = "no_measurements"
    DEVICE_CONFLICT = "device_conflict"
    RUN_CONFLICT = "run_conflict"
    RUN_CLOSED = "run_closed"
    DATABASE_UNAVAILABLE = "database_unavailable"
    # What was sent cannot be used.
    INVALID_MODEL = "invalid_model"
    INVALID_UPLOAD = "invalid_upload"
    INVALID_CONFIG = "invalid_config"
    INVALID_MEASUREMENT = "invalid_measurement"
    INVALID_REPORT = "invalid_report"
    INVALID_RECORD = "invalid_record"
    UNSUPPORTED_KERNEL = "unsupported_kernel"
    UNREPRODUCIBLE_KERNELS = "unreproducible_kernels"
    UNSTORABLE_VALUE = "unstorable_value"


_TITLES: dict[ProblemCode, str] = {
    ProblemCode.BAD_REQUEST: "Bad request",
    ProblemCode.UNAUTHORIZED: "A valid token is needed",
    ProblemCode.NOT_FOUND: "Not found",
    ProblemCode.METHOD_NOT_ALLOWED: "Method not allowed",
    ProblemCode.CONFLICT: "Conflict",
    ProblemCode.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    ProblemCode.VALIDATION_ERROR: "The request is invalid",
    ProblemCode.INTERNAL_ERROR: "Internal server error",
    ProblemCode.UNAVAILABLE: "Service unavailable",
    ProblemCode.HTTP_ERROR: "HTTP error",
    ProblemCode.BODY_TOO_LARGE: "The request body is too large",
    ProblemCode.RATE_LIMITED: "Too many requests without a token",
    ProblemCode.BUSY: "Every prediction worker is busy",
    ProblemCode.DEADLINE_EXCEEDED: "The question ran past the time limit",
    ProblemCode.CLIENT_CLOSED_REQUEST: "The client closed the connection",
    ProblemCode.SHUTTING_DOWN: "The service is shutting down",
    ProblemCode.WORKER_DIED: "The prediction worker died",
    ProblemCode.UNKNOWN_DEVICE: "Unknown device",
    ProblemCode.UNKNOWN_MODEL: "Unknown model",
    ProblemCode.UNKNOWN_RUN: "Unknown run",
    ProblemCode.UNKNOWN_JOB: "Unknown job",
    ProblemCode.NO_MEASUREMENTS: "The device has no measurements",
    ProblemCode.DEVICE_CONFLICT: "The device is registered otherwise",
    ProblemCode.RUN_CONFLICT: "The run belongs to another device",
    ProblemCode.RUN_CLOSED: "The run is finished or killed",
    ProblemCode.DATABASE_UNAVAILABLE: "The database is unavailable",
    ProblemCode.INVALID_MODEL: "The model cannot be used",
    ProblemCode.INVALID_UPLOAD: "The upload is malformed",
    ProblemCode.INVALID_CONFIG: "The compression config is invalid",
    ProblemCode.INVALID_MEASUREMENT: "A measurement cannot be used",
    ProblemCode.INVALID_REPORT: "The run report cannot be stored",
    ProblemCode.INVALID_RECORD: "A value cannot be stored",
    ProblemCode.UNSUPPORTED_KERNEL: "A kernel cannot be predicted",
    ProblemCode.UNREPRODUCIBLE_KERNELS: "The device's kernels cannot be built here",
    ProblemCode.UNSTORABLE_VALUE: "The database cannot store a value",
}

_CODE_BY_STATUS: dict[int, ProblemCode] = {
    400: ProblemCode.BAD_REQUEST,
    401: ProblemCode.UNAUTHORIZED,
    404: ProblemCode.NOT_FOUND,
    405: ProblemCode.METHOD_NOT_ALLOWED,
    409: ProblemCode.CONFLICT,
    413: ProblemCode.BODY_TOO_LARGE,
    415: ProblemCode.UNSUPPORTED_MEDIA_TYPE,
    422: ProblemCode.VALIDATION_ERROR,
    429: ProblemCode.RATE_LIMITED,
    499: ProblemCode.CLIENT_CLOSED_REQUEST,
    500: ProblemCode.INTERNAL_ERROR,
    503: ProblemCode.UNAVAILABLE,
    504: ProblemCode.DEADLINE_EXCEEDED,
}


def code_for_status(status: int) -> ProblemCode:
    """The code of an error that says no more than its status (an HTTPException raised without one)."""
    return _CODE_BY_STATUS.get(status, ProblemCode.HTTP_ERROR)


def problem_type(code: ProblemCode) -> str:
    """The problem's `type` URI."""
    return _TYPE_PREFIX + code.value


@dataclass(frozen=True)
class Problem:
    """What an error answer says: its status, code and one-line detail (picklable: workers send it back)."""

    status: int
    code: ProblemCode
    detail: str

    def to_dict(self, instance: str | None = None, errors: Sequence[Mapping[str, Any]] | None = None
                ) -> dict[str, Any]:
        """The problem+json document; `errors` (the field errors of a 422) is an extension member."""
        document: dict[str, Any] = {"type": problem_type(self.code), "title": _TITLES[self.code],
                                    "status": self.status, "detail": self.detail, "code": self.code.value}
        if instance is not None:
            document["instance"] = instance
        if errors is not None:
            document["errors"] = list(errors)
        return document


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_MEDIA_TYPE

    @classmethod
    def of(cls, problem: Problem, instance: str | None = None, headers: Mapping[str, str] | None = None,
           errors: Sequence[Mapping[str, Any]] | None = None) -> ProblemResponse:
        return cls(problem.to_dict(instance, errors), status_code=problem.status, headers=headers)


class HTTPProblem(HTTPException):
    """An HTTPException that names its code; a plain HTTPException gets the code of its status."""

    def __init__(self, status_code: int, code: ProblemCode, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=dict(headers) if headers else None)
        self.code = code
