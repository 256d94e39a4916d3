"""Holding predictions against measurements: per model and config, error shares, MAPE, ranking agreement."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import onnx

from predictor.config import CompressionConfig
from predictor.estimate import DevicePredictor
from predictor.prepared import PreparedModel
from predictor.runtime import RuntimeSpec

__all__ = ["summarize_validation", "validate_models"]

logger = logging.getLogger(__name__)

# Pairs of configs whose measured latencies differ by less than this are a tie, not a ranking question.
RANKING_MIN_GAP = 0.05


class _Timing(Protocol):
    median_ms: float


class _Measurer(Protocol):
    def measure_model(self, model: onnx.ModelProto, protocol: Any) -> _Timing: ...


def validate_models(
    predictor: DevicePredictor,
    backend: _Measurer,
    runtime: RuntimeSpec,
    models: Sequence[tuple[str, onnx.ModelProto]],
    candidates: Sequence[tuple[str, CompressionConfig]],
    protocol: Any,
) -> dict[str, Any]:
    """Predict and measure every model under the baseline and each candidate config.

    `backend` is the profiler backend of this host and `protocol` its measurement protocol.
    """
    rows: list[dict[str, Any]] = []
    for model_name, model in models:
        prepared = PreparedModel.create(model, runtime)
        for config_name, config in [("baseline", CompressionConfig()), *candidates]:
            estimate = predictor.estimate(prepared.kernels(config))
            measured = backend.measure_model(prepared.compressed(config), protocol).median_ms
            rows.append({
                "model": model_name,
                "config": config_name,
                "predicted_ms": estimate.latency_ms,
                "interval_ms": list(estimate.interval_ms),
                "measured_ms": measured,
                "error": (estimate.latency_ms - measured) / measured,
                "table_hit_rate": estimate.table_hit_rate,
            })
            logger.info("%s/%s: predicted %.3f ms, measured %.3f ms", model_name, config_name,
                        estimate.latency_ms, measured)
    return {"device": predictor.device, "rows": rows, "summary": summarize_validation(rows)}


def summarize_validation(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Share within +-5% and +-10%, MAPE, and pairwise ranking agreement within each model."""
    if not rows:
        return {"count": 0, "within_5pct": 0.0, "within_10pct": 0.0, "mape": 0.0, "ranking_agreement": None,
                "ranking_pairs": 0}
    errors = np.array([abs(row["error"]) for row in rows])
    agree = pairs = 0
    by_model: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    for group in by_model.values():
        for a, b in itertools.combinations(group, 2):
            gap = abs(a["measured_ms"] - b["measured_ms"]) / min(a["measured_ms"], b["measured_ms"])
            if gap <= RANKING_MIN_GAP:
                continue
            pairs += 1
            agree += (a["measured_ms"] < b["measured_ms"]) == (a["predicted_ms"] < b["predicted_ms"])
    return {
        "count": len(rows),
        "within_5pct": float(np.mean(errors <= 0.05)),
        "within_10pct": float(np.mean(errors <= 0.10)),
        "mape": float(np.mean(errors)),
        "ranking_agreement": agree / pairs if pairs else None,
        "ranking_pairs": pairs,
    }
