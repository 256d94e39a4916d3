"""The OpenAPI document as the API answers: error answers are problem+json, and it is served at both versions' paths.

FastAPI documents every additional response as application/json, and a 422 as its own HTTPValidationError. Here,
once per app, each 4xx and 5xx answer that carries no schema of its own (or an error schema) is documented as
application/problem+json with ProblemPublic (ValidationProblemPublic for 422), as service.api.errors answers it.
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from service.api.problems import PROBLEM_MEDIA_TYPE
from service.api.versions import API_PREFIX, LEGACY_API_PREFIX

__all__ = ["OPENAPI_PATH", "install_openapi"]

OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
_LEGACY_OPENAPI_PATH = f"{LEGACY_API_PREFIX}/openapi.json"
_SCHEMAS = "#/components/schemas/"
_PROBLEM = "ProblemPublic"
_VALIDATION_PROBLEM = "ValidationProblemPublic"
# FastAPI's own 422 schemas, replaced by the problem schemas above.
_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_ERROR_SCHEMAS = frozenset({_PROBLEM, _VALIDATION_PROBLEM, *_FASTAPI_ERROR_SCHEMAS})


def _is_error_answer(response: dict[str, Any]) -> bool:
    """True when the documented answer has no schema, or an error schema (not a route's own body, e.g. health's)."""
    content = response.get("content")
    if not content:
        return True
    schemas = [media.get("schema", {}) for media in content.values()]
    return all(schema.get("$ref", "").removeprefix(_SCHEMAS) in _ERROR_SCHEMAS for schema in schemas)


def document_problems(document: dict[str, Any]) -> dict[str, Any]:
    """Rewrite `document` in place: error answers as problem+json; FastAPI's unused 422 schemas dropped."""
    for operations in document.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if not (status.isdigit() and int(status) >= 400 and _is_error_answer(response)):
                    continue
                schema = _VALIDATION_PROBLEM if status == "422" else _PROBLEM
                response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": _SCHEMAS + schema}}}
    schemas = document.get("components", {}).get("schemas", {})
    for name in _FASTAPI_ERROR_SCHEMAS:
        schemas.pop(name, None)
    return document


def install_openapi(app: FastAPI) -> None:
    """Document error answers as problem+json, and serve the document at the unversioned path too.

    The app must be created with openapi_url=OPENAPI_PATH.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document_problems(generate())
        return app.openapi_schema  # type: ignore[return-value]  # set by generate()

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(_LEGACY_OPENAPI_PATH, include_in_schema=False)
    def read_legacy_openapi() -> JSONResponse:
        return JSONResponse(app.openapi())
