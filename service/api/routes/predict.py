"""Predicting a model's latency on a device, and ranking compression candidates by it."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from predictor.compression.config import config_json_schema
from service.api.deps import PredictionsDep, ReadAccess
from service.api.schemas import PredictionPublic, PredictRequest, RankingPublic, RankRequest

__all__ = ["router"]

router = APIRouter(tags=["predict"], dependencies=[ReadAccess])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device or model"},
    409: {"description": "the device has no measurements"},
    422: {"description": "invalid compression config or input shapes"},
    503: {"description": "every prediction worker is busy and the queue is full (Retry-After)"},
    504: {"description": "the question ran past LATPRED_PREDICT_TIMEOUT_S and was stopped"},
}


# Reads, though POST: the question has a body. The work runs in a worker process (service.api.workers), under
# the deadline, and stops when the client goes away.
# exclude_none: the answer's config shows the fields it sets, as the library's CompressionConfig.canonical_json does
# (nothing else in PredictionPublic is ever null).
@router.post("/predict", response_model=PredictionPublic, response_model_exclude_none=True, responses=_ERRORS)
async def predict(body: PredictRequest, request: Request, predictions: PredictionsDep) -> Any:
    """The model's predicted latency on the device under the config, per kernel and in total."""
    return await predictions.answer("predict", body.model_dump(mode="json"), request.receive)


@router.post("/rank", response_model=RankingPublic, responses=_ERRORS)
async def rank(body: RankRequest, request: Request, predictions: PredictionsDep) -> Any:
    """Every candidate config's predicted latency and speedup over the uncompressed model, fastest first."""
    return await predictions.answer("rank", body.model_dump(mode="json"), request.receive)


@router.get("/config-schema", tags=["config"])
def read_config_schema() -> dict[str, Any]:
    """The JSON schema of compression configs."""
    return config_json_schema()
