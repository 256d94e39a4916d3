"""Predicting a model's latency on a device, and ranking compression candidates by it."""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from predictor.config import config_json_schema, parse_config
from predictor.prepared import predict_config, rank_candidates
from service.api.deps import CacheDep, ReadAccess, StoreDep
from service.api.predictions import PredictionCache
from service.api.schemas import PredictionPublic, PredictRequest, RankingPublic, RankRequest
from service.context import Store

__all__ = ["router"]

router = APIRouter(tags=["predict"], dependencies=[ReadAccess])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "unknown device or model"},
    409: {"description": "the device has no measurements"},
    422: {"description": "invalid compression config or input shapes"},
}


def _predict(body: PredictRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    config = parse_config(body.config)
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    estimate = predict_config(predictor, prepared, config)
    return {**estimate.to_dict(), "model_id": body.model_id, "config": config.model_dump(exclude_none=True)}


def _rank(body: RankRequest, store: Store, cache: PredictionCache) -> dict[str, Any]:
    candidates = [(candidate.name, parse_config(candidate.config)) for candidate in body.candidates]
    runtime, predictor = cache.device_predictor(store, body.device)
    prepared = cache.prepared_model(store, body.model_id, runtime, body.input_shapes)
    # Fresh configs are answered at the kernel level: no quantizer run or runtime session per candidate.
    ranking = rank_candidates(predictor, prepared, candidates, body.target_speedup, fast=True)
    return {**ranking, "model_id": body.model_id}


# Reads, though POST: the question has a body. Handlers are async and push the CPU work to the thread pool.
@router.post("/predict", response_model=PredictionPublic, responses=_ERRORS)
async def predict(body: PredictRequest, store: StoreDep, cache: CacheDep) -> dict[str, Any]:
    """The model's predicted latency on the device under the config, per kernel and in total."""
    return await run_in_threadpool(_predict, body, store, cache)


@router.post("/rank", response_model=RankingPublic, responses=_ERRORS)
async def rank(body: RankRequest, store: StoreDep, cache: CacheDep) -> dict[str, Any]:
    """Every candidate config's predicted latency and speedup over the uncompressed model, fastest first."""
    return await run_in_threadpool(_rank, body, store, cache)


@router.get("/config-schema", tags=["config"])
def read_config_schema() -> dict[str, Any]:
    """The JSON schema of compression configs."""
    return config_json_schema()
