"""Holding predictions against measurements: per model and config, error shares, MAPE, ranking agreement."""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
import onnx
from sqlalchemy.orm import Session

from predictor.compression.config import CompressionConfig, parse_config
from predictor.errors import LatpredError
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel
from predictor.runtime.optimizer import RuntimeSpec
from predictor.store import Device, add_validation

__all__ = ["GroundTruth", "measure_against_table", "record_validations", "summarize_validation", "validate_models"]

logger = logging.getLogger(__name__)

# Pairs of configs whose measured latencies differ by less than this are a tie, not a ranking question.
RANKING_MIN_GAP = 0.05


class _Timing(Protocol):
    @property
    def median_ms(self) -> float: ...

    @property
    def reference_ms(self) -> float | None: ...

    @property
    def reference_kind(self) -> str: ...


class _Measurer(Protocol):
    def measure_model(self, model: onnx.ModelProto, protocol: Any, paired: bool | None = None,
                      reference: str | None = None) -> _Timing: ...


class GroundTruth(NamedTuple):
    """A measurement held against a device's table."""

    measured_ms: float
    scaled_ms: float | None  # in the device's baseline state (None without a reference or a baseline)
    reference_ms: float | None  # the reference kernel's time during the runs
    reference: str  # which reference kernel ("fp32", "int8")


def measure_against_table(backend: _Measurer, model: onnx.ModelProto, protocol: Any, baselines: Mapping[str, float],
                          reference_ms: Callable[[], float] | None = None) -> GroundTruth:
    """Measure a model as the ground truth for a device's table (`baselines`: DevicePredictor.reference_baselines).

    The reference kernel's time comes from the backend's paired runs (Timing.reference_ms, the reference of
    the model's kind) or else from `reference_ms`, the fp32 reference timed right after. A device whose
    reports name no int8 baseline (profiled before the int8 reference) is held to the fp32 one.
    """
    timing = backend.measure_model(model, protocol, reference=None if "int8" in baselines else "fp32")
    reference_now = timing.reference_ms
    kind = timing.reference_kind  # "fp32" where unpaired, as the fallback `reference_ms` is
    if reference_now is None and reference_ms is not None:
        reference_now = reference_ms()
    return GroundTruth(timing.median_ms, compensate(timing.median_ms, reference_now, baselines.get(kind)),
                       reference_now, kind)


def validate_models(
    predictor: DevicePredictor,
    backend: _Measurer,
    runtime: RuntimeSpec,
    models: Sequence[tuple[str, onnx.ModelProto]],
    candidates: Sequence[tuple[str, Any]],
    protocol: Any,
    reference_ms: Callable[[], float] | None = None,
    skip_failed: bool = False,
) -> dict[str, Any]:
    """Predict and measure every model under the baseline and each candidate config (a CompressionConfig or its
    JSON value).

    `backend` is the profiler backend of this host and `protocol` its measurement protocol.
    Measurements are also given scaled to the device's baseline state, as the table is (a shared host's
    load is not the model's cost), by the backend's paired reference runs or else by `reference_ms`, which
    times the device's reference kernel now.
    `skip_failed`: a model or config that fails with a LatpredError is listed under "failed" ({"model", "config"
    (None: the model itself), "error"}) and the others are validated; otherwise the error is raised.
    """
    rows: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for model_name, model in models:
        try:
            prepared = PreparedModel.create(model, runtime)
        except LatpredError as exc:
            if not skip_failed:
                raise
            failed.append({"model": model_name, "config": None, "error": str(exc)})
            continue
        for config_name, raw in [("baseline", CompressionConfig()), *candidates]:
            try:
                config = raw if isinstance(raw, CompressionConfig) else parse_config(raw)
                estimate = predictor.estimate(prepared.kernels(config))
                compressed = prepared.compressed(config)
                measured, scaled, _, _ = measure_against_table(backend, compressed, protocol,
                                                               predictor.reference_baselines, reference_ms)
            except LatpredError as exc:
                if not skip_failed:
                    raise
                failed.append({"model": model_name, "config": config_name, "error": str(exc)})
                continue
            rows.append(validation_row(model_name, config_name, estimate.latency_ms, measured, scaled,
                                       estimate.table_hit_rate, list(estimate.interval_ms)))
            logger.info("%s/%s: predicted %.3f ms, measured %.3f ms", model_name, config_name,
                        estimate.latency_ms, measured)
    return {"device": predictor.device, "rows": rows, "summary": summarize_validation(rows),
            "summary_raw": summarize_validation(rows, compensated=False), "failed": failed}


def record_validations(session: Session, device: Device, rows: Iterable[Mapping[str, Any]]) -> None:
    """Keep `validation_row` records in the store, where the dashboard holds predictions against them."""
    for row in rows:
        add_validation(session, device, model_name=row["model"], config_name=row["config"],
                       predicted_ms=row["predicted_ms"], measured_ms=row["measured_ms"],
                       scaled_ms=row["compensated_measured_ms"])


def compensate(measured_ms: float, reference_now: float | None, baseline: float | None) -> float | None:
    """A measurement scaled to the device's baseline state (None without a reference)."""
    if reference_now is None or baseline is None or reference_now <= 0:
        return None
    return measured_ms * baseline / reference_now


def validation_row(model: str, config: str, predicted_ms: float, measured_ms: float,
                   compensated_ms: float | None, table_hit_rate: float, interval_ms: list[float]) -> dict[str, Any]:
    """One predicted-vs-measured record; `error` uses the compensated measurement when there is one."""
    truth = compensated_ms if compensated_ms is not None else measured_ms
    return {
        "model": model,
        "config": config,
        "predicted_ms": predicted_ms,
        "interval_ms": interval_ms,
        "measured_ms": measured_ms,
        "compensated_measured_ms": compensated_ms,
        "error": (predicted_ms - truth) / truth,
        "raw_error": (predicted_ms - measured_ms) / measured_ms,
        "table_hit_rate": table_hit_rate,
    }


def summarize_validation(rows: Sequence[dict[str, Any]], compensated: bool = True) -> dict[str, Any]:
    """Share within +-5% and +-10%, MAPE, and pairwise ranking agreement within each model.

    `compensated`: judge against drift-compensated measurements where rows have them.
    """
    def truth(row: dict[str, Any]) -> float:
        value = row.get("compensated_measured_ms") if compensated else None
        return float(value) if value is not None else float(row["measured_ms"])

    rows = [{**row, "measured_ms": truth(row), "error": (row["predicted_ms"] - truth(row)) / truth(row)}
            for row in rows]
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
