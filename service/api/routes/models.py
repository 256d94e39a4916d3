"""Uploaded ONNX models, stored by content id (sha256); parsing runs only the runtime's optimizer."""
from __future__ import annotations

import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.concurrency import run_in_threadpool

from predictor.errors import InvalidModelError
from predictor.kernels.keys import Kernel, extract_kernels
from predictor.model.graph import load_model, model_inputs, set_input_shapes
from predictor.runtime.optimizer import local_runtime
from predictor.store import get_stored_model, list_stored_models, save_stored_model
from service.api.deps import ModelStoreDep, ReadAccess, SessionDep, SettingsDep, StoreDep, WriteAccess
from service.api.model_store import ModelStore
from service.api.problems import HTTPProblem, ProblemCode
from service.api.schemas import ModelPublic, ModelsPublic, ModelSummaryPublic
from service.api.uploads import (
    UploadedModel,
    check_model_size,
    display_name,
    parse_input_shapes_field,
    read_model_upload,
    upload_id,
)
from service.context import Store
from service.settings import Settings

__all__ = ["router"]

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/models", tags=["models"], dependencies=[ReadAccess])

# Offsets past a 32-bit integer overflow SQLite/PostgreSQL binds.
_MAX_OFFSET = 2**31 - 1

ModelId = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="sha256 hex digest of the model bytes")]

_UPLOAD_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "the ONNX model"},
                        "input_shapes": {"type": "string", "example": "input=1x3x224x224,other=1x10",
                                         "description": "fix symbolic input dims"},
                    },
                }
            }
        },
    }
}


def _kernels_document(kernels: list[Kernel], max_mb: float) -> list[dict[str, Any]]:
    """The kernel list as stored and answered: plain JSON (no NaN or infinity), at most `max_mb` of it."""
    document = [kernel.to_dict() for kernel in kernels]
    try:
        size_bytes = len(json.dumps(document, allow_nan=False, separators=(",", ":")))
    except ValueError as exc:  # a NaN or infinite attribute value: no JSON client could read it back
        raise InvalidModelError(f"the model's kernels hold a value JSON cannot carry ({exc})") from exc
    if size_bytes > max_mb * 2**20:
        raise InvalidModelError(f"the model's kernel list takes {size_bytes / 2**20:.1f} MB as JSON, over the limit "
                                f"of {max_mb:g} MB of this server (LATPRED_MAX_MODEL_KERNELS_MB)")
    return document


def _store_model(
    store: Store, settings: Settings, model_store: ModelStore, upload: UploadedModel, shapes: dict[str, list[int]],
    model_id: str,
) -> tuple[ModelPublic, bool]:
    """Parse, extract the base kernels, keep the bytes and the row; (model, created).

    Every check runs before anything is written; the row and the bytes are written together (in one
    transaction where the bytes are kept in the store): a failed upload leaves neither.
    """
    with store.sessions() as session:
        existing = get_stored_model(session, model_id)
        if existing is not None and existing.kernels is not None:
            # Same bytes as before: nothing to parse. Keep them again if they went missing.
            if not model_store.has(session, model_id):
                model_store.write(session, model_id, upload.data)
                session.commit()
            return ModelPublic.model_validate(existing), False
    model = load_model(upload.data)
    check_model_size(model, settings.max_model_nodes)
    fixed = set_input_shapes(model, shapes)
    # The server's own runtime (onnxruntime CPU, 1 thread) decides the kernels shown here; predict
    # re-extracts them for each device's runtime.
    kernels = _kernels_document(extract_kernels(fixed, local_runtime(1)), settings.max_model_kernels_mb)
    with store.sessions() as session:
        stored = save_stored_model(
            session,
            model_id=model_id,
            name=display_name(upload.filename),
            size_bytes=len(upload.data),
            inputs=model_inputs(fixed),
            kernels=kernels,
        )
        public = ModelPublic.model_validate(stored)
        had_bytes = model_store.has(session, model_id)
        model_store.write(session, model_id, upload.data)
        try:
            session.commit()
        except BaseException:
            if not had_bytes:
                model_store.discard(model_id)
            raise
    logger.info("stored model %s (%s, %d bytes, %d kernels)", model_id[:12], public.name, public.size_bytes,
                len(public.kernels))
    return public, True


@router.post("", response_model=ModelPublic, status_code=status.HTTP_201_CREATED, dependencies=[WriteAccess],
             openapi_extra=_UPLOAD_FORM,
             responses={200: {"description": "these bytes were uploaded before", "model": ModelPublic},
                        413: {"description": "larger than LATPRED_MAX_UPLOAD_MB"},
                        422: {"description": "not a loadable ONNX model, external data, or over the node limit"}})
async def upload_model(request: Request, response: Response, settings: SettingsDep, store: StoreDep,
                       model_store: ModelStoreDep) -> ModelPublic:
    """Upload an ONNX file (multipart field `file`); its id is the sha256 of the bytes (and of `input_shapes`)."""
    # UploadTooLargeError (413) and BadUploadError (422) are answered by class (service.api.errors).
    upload = await read_model_upload(request, settings.max_upload_mb)
    shapes = parse_input_shapes_field(upload.input_shapes)
    public, created = await run_in_threadpool(_store_model, store, settings, model_store, upload, shapes,
                                              upload_id(upload.data, shapes))
    if not created:
        response.status_code = status.HTTP_200_OK
    return public


@router.get("", response_model=ModelsPublic, dependencies=[WriteAccess])
def read_models(session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET)] = 0) -> ModelsPublic:
    """Uploaded models, newest first; for token holders only.

    A model's id is all a question about it needs (anyone who knows one may predict with it where reads are
    open), so ids are listed only to those who may upload.
    """
    summaries, total = list_stored_models(session, limit=limit, offset=offset)
    return ModelsPublic(data=[ModelSummaryPublic.model_validate(row) for row in summaries], count=total,
                        limit=limit, offset=offset)


@router.get("/{model_id}", response_model=ModelPublic, responses={404: {"description": "unknown model"}})
def read_model(model_id: ModelId, session: SessionDep) -> ModelPublic:
    """An uploaded model's inputs and base kernels."""
    stored = get_stored_model(session, model_id)
    if stored is None or stored.kernels is None:
        raise HTTPProblem(status.HTTP_404_NOT_FOUND, ProblemCode.UNKNOWN_MODEL, f"unknown model id {model_id!r}")
    return ModelPublic.model_validate(stored)
