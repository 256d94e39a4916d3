"""Per-op-type LightGBM latency regressors: training, LightGBM-text persistence, batched prediction.

Each op type gets a baseline of latency on its work and traffic, chosen per op type between two forms by
how well each extrapolates (below), and three boosters on its residual in log(latency_ms): the median (L2
regression; beat L1 and Huber on held-out MAPE) and
the 0.1 / 0.9 quantiles, whose interval is widened by split-conformal shifts from the hold-out. All of it
is stored as one text blob, a JSON header line followed by the boosters' own text models (never pickle),
so a stored regressor survives library upgrades or fails loudly when the feature set changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
from sqlalchemy.orm import Session

from predictor.errors import LatpredError
from predictor.estimation.context import ContextModel, measured_context_factors
from predictor.kernels.features import FEATURE_NAMES, features_matrix
from predictor.kernels.keys import KernelKey
from predictor.records import reports_of
from predictor.store import Device, iter_measurements, list_runs, load_regressors, save_regressor

__all__ = [
    "BASELINE_FORMS",
    "HI_QUANTILE",
    "LO_QUANTILE",
    "Baseline",
    "InvalidRegressorError",
    "OpRegressor",
    "SIBLING_OP_TYPES",
    "RegressorSet",
    "fit_baseline",
    "kernel_size",
    "out_of_fold_latencies",
    "train_device_regressors",
    "train_op_regressor",
    "training_sets",
]

logger = logging.getLogger(__name__)

LO_QUANTILE = 0.1
HI_QUANTILE = 0.9

_TEXT_FORMAT = "latpred-op-regressor"
_TEXT_VERSION = 1
_PARTS = ("median", "lo", "hi")
_TEST_SHARE = 0.2
# Below this many samples a 20% hold-out is too small to say anything: train on all, report in-sample.
_MIN_HELD_OUT_SAMPLES = 10
_EARLY_STOPPING_ROUNDS = 20
_SMALL_DATA_ROUNDS = 50
# Few leaves, bins and rounds: ~0.3 s per 500-sample op type, and few shallow trees keep prediction cheap
# (LightGBM costs ~50 ns per tree and row; the hot path predicts hundreds of kernels in a few ms).
_NUM_LEAVES = 15
_MAX_BIN = 63
# Conformal calibration of the interval needs a few held-out samples per half.
_MIN_CALIBRATION_SAMPLES = 10
_MAX_MIN_DATA_IN_LEAF = 5
_DATA_VERSION_CHARS = 16
# The baseline carries the trend of latency with work and traffic, and extrapolates beyond the sampled
# sizes, which trees cannot (their prediction is flat outside the training range); the boosters learn the
# residual structure. Two forms:
# - "additive": latency = c0 + c1 x MACs + c2 x bytes moved, c >= 0 (a per-run cost plus compute and memory
#   time), fitted on relative error. Linear in work: a kernel 4x the largest sampled one costs ~4x.
# - "loglog": log latency linear in log MACs and log bytes (a power law). Fits kernels whose cost hardly
#   grows with size (Reshape), but its exponents, fitted where fixed costs dominate, sum below 1: fitted on
#   the smaller 80% of each op type's keys of accuracy run 7's table, it predicted the largest 20% too fast
#   (median error -26.8% over op types, docs/history/results/baselines_run7.json), e.g. the 768x3072
#   matmuls of a ViT-Base.
# Each op type takes the form whose fit on its smaller 80% of keys (by MACs, or bytes where an op has no
# MACs) predicts the larger 20% better; below _MIN_HELD_OUT_SAMPLES keys, "additive".
_BASELINE_FEATURES = ("log_macs", "log_bytes_moved")
_BASELINE_COLUMNS = [FEATURE_NAMES.index(name) for name in _BASELINE_FEATURES]
_ADDITIVE_COLUMNS = [FEATURE_NAMES.index(name) for name in ("macs", "bytes_moved")]
_BASELINE_RIDGE = 1e-3
BASELINE_FORMS = ("additive", "loglog")
_EXTRAPOLATION_SHARE = 0.2
# The additive form's floor (ms): a fit with every coefficient 0 would predict 0.
_MIN_BASELINE_MS = 1e-6
_BYTES_MOVED = FEATURE_NAMES.index("bytes_moved")
_MACS = FEATURE_NAMES.index("macs")


# onnxruntime's fused kernels are their base kernel with the activation applied in its output loop (FusedConv
# is Conv + Relu/Clip/..., FusedGemm Gemm + activation): the same work, the same shapes. Each trains on its
# own keys and, for training only, its sibling's (the activation is a feature), so a shape measured only
# fused or only unfused informs both. mnasnet1_0 pruned 30% of accuracy run 10: its four 806-channel 5x5
# depthwise FusedConvs at 7x7 were a miss predicted 0.36 ms against 0.62 ms measured, while the table held
# the same conv unfused at 0.57 ms (docs/history/results/breakdown_mobilenet_v3_small_prune50_r8.json).
# Dynamic int8's matmuls are one kernel in two forms: DynamicQuantizeMatMul quantizes its input itself, and
# MatMulIntegerToFloat takes it quantized by a DynamicQuantizeLinear that several of them share (a T5's Q, K and
# V projections); the same MACs on the same int8 weights. An op type with fewer keys than a regressor needs
# trains on its siblings' as well (train_device_regressors): in a 30-minute real-export profile (2026-12-06),
# MatMulIntegerToFloat trained on 2 of its 6 keys and 38 DynamicQuantizeMatMul keys predicted the other 4 at
# MAPE 5-6% over five draws, where the bandwidth fallback it had before was off by 87-100%.
# A MatMul whose second input is a constant weight is the work of a Gemm (torch exports nn.Linear on 3-D input as
# MatMul + Add, on 2-D input as Gemm), so MatMul trains on Gemm's keys too. Gemm does not take MatMul's: many of
# those are activation-by-activation products (attention), which a Gemm never is. In a 30-minute real-export
# profile (2026-12-06), a T5 encoder's 36 regressed MatMuls were predicted 27% fast by MatMul's own 33 keys; with
# Gemm's, the file went from -23% to -6% and no other file moved more than 3 points.
SIBLING_OP_TYPES: dict[str, tuple[str, ...]] = {
    "Conv": ("FusedConv",), "FusedConv": ("Conv",),
    "Gemm": ("FusedGemm",), "FusedGemm": ("Gemm",),
    "MatMul": ("FusedMatMul", "Gemm"), "FusedMatMul": ("MatMul",),
    "MatMulIntegerToFloat": ("DynamicQuantizeMatMul",), "DynamicQuantizeMatMul": ("MatMulIntegerToFloat",),
}


class InvalidRegressorError(LatpredError, ValueError):
    """A stored regressor text is malformed or was trained on another feature set (retrain it)."""


@dataclass(frozen=True)
class _Objective:
    """One of the three boosters: its LightGBM objective and budget."""

    name: str
    objective: str
    alpha: float | None
    learning_rate: float
    max_rounds: int


# The quantile boosters only shape the interval (conformal calibration fixes its width): fewer, bolder trees.
_OBJECTIVES = (
    _Objective("median", "regression", None, learning_rate=0.2, max_rounds=150),
    _Objective("lo", "quantile", LO_QUANTILE, learning_rate=0.3, max_rounds=50),
    _Objective("hi", "quantile", HI_QUANTILE, learning_rate=0.3, max_rounds=50),
)


def _params(goal: _Objective, n_train: int, seed: int) -> dict[str, Any]:
    """LightGBM parameters: small, fast, deterministic; leaf size adapts to tiny data sets."""
    params: dict[str, Any] = {
        "objective": goal.objective,
        "learning_rate": goal.learning_rate,
        "num_leaves": _NUM_LEAVES,
        "max_bin": _MAX_BIN,
        # LightGBM needs min_data_in_leaf <= n/2 to split at all on tiny sets.
        "min_data_in_leaf": max(1, min(_MAX_MIN_DATA_IN_LEAF, n_train // 4)),
        "min_data_in_bin": 1,
        "min_sum_hessian_in_leaf": 0.0,
        "feature_pre_filter": False,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "seed": seed,
        "verbose": -1,
    }
    if goal.alpha is not None:
        params["alpha"] = goal.alpha
    return params


@dataclass(frozen=True)
class Baseline:
    """An op type's baseline: its form (BASELINE_FORMS) and coefficients, intercept first."""

    form: str
    coefficients: tuple[float, ...]

    def log_latency(self, features: np.ndarray) -> np.ndarray:
        """Log latency (ms) the baseline alone predicts for a feature matrix."""
        weights = np.asarray(self.coefficients[1:], dtype=np.float64)
        if self.form == "loglog":
            return self.coefficients[0] + features[:, _BASELINE_COLUMNS] @ weights
        return np.log(np.maximum(self.coefficients[0] + features[:, _ADDITIVE_COLUMNS] @ weights, _MIN_BASELINE_MS))


def _fit_loglog(features: np.ndarray, latency: np.ndarray) -> Baseline:
    """A ridge fit of log latency on log MACs and log bytes."""
    design = features[:, _BASELINE_COLUMNS]
    log_latency = np.log(latency)
    center = design.mean(axis=0)
    centered = design - center
    gram = centered.T @ centered + _BASELINE_RIDGE * len(design) * np.eye(len(_BASELINE_COLUMNS))
    coefficients = np.linalg.solve(gram, centered.T @ (log_latency - log_latency.mean()))
    intercept = float(log_latency.mean() - center @ coefficients)
    return Baseline("loglog", (intercept, *(float(c) for c in coefficients)))


def _fit_additive(features: np.ndarray, latency: np.ndarray) -> Baseline:
    """Non-negative c minimising the squared relative error of c0 + c1 x MACs + c2 x bytes.

    Three unknowns: every subset of them is solved by least squares, the best non-negative one kept (an
    exact non-negative least squares).
    """
    design = np.column_stack([np.ones(len(latency)), features[:, _ADDITIVE_COLUMNS]])
    scale = np.maximum(np.abs(design).max(axis=0), 1e-30)
    relative = design / scale / latency[:, None]
    target = np.ones(len(latency))
    best, best_residual = np.zeros(design.shape[1]), float(len(latency))
    for mask in range(1, 2 ** design.shape[1]):
        columns = [j for j in range(design.shape[1]) if mask >> j & 1]
        solution, *_ = np.linalg.lstsq(relative[:, columns], target, rcond=None)
        if np.any(solution < 0):
            continue
        residual = float(np.sum((relative[:, columns] @ solution - target) ** 2))
        if residual < best_residual:
            best = np.zeros(design.shape[1])
            best[columns] = solution
            best_residual = residual
    return Baseline("additive", tuple(float(c) for c in best / scale))


_FITS = {"additive": _fit_additive, "loglog": _fit_loglog}


def kernel_size(features: np.ndarray) -> np.ndarray:
    """How large each of one op type's kernels is: its MACs, or its bytes moved where the op type has no MACs."""
    macs = features[:, _ADDITIVE_COLUMNS[0]]
    return macs if np.any(macs > 0) else features[:, _ADDITIVE_COLUMNS[1]]


def fit_baseline(features: np.ndarray, latency_ms: np.ndarray, form: str | None = None) -> Baseline:
    """The baseline of one op type's keys (a feature matrix) and latencies, in `form` (BASELINE_FORMS).

    `form` None: the form that extrapolates better from the smaller keys to the larger ones, fitted on all.
    """
    latency = np.asarray(latency_ms, dtype=np.float64)
    if form is not None:
        if form not in _FITS:
            raise ValueError(f"baseline form must be one of {BASELINE_FORMS}, got {form!r}")
        return _FITS[form](features, latency)
    form = "additive"
    n = len(latency)
    if n >= _MIN_HELD_OUT_SAMPLES:
        order = np.argsort(kernel_size(features), kind="stable")
        split = n - max(1, int(round(n * _EXTRAPOLATION_SHARE)))
        small, large = order[:split], order[split:]
        log_large = np.log(latency[large])
        errors = {name: float(np.mean(np.abs(_FITS[name](features[small], latency[small]).log_latency(features[large])
                                             - log_large)))
                  for name in BASELINE_FORMS}
        form = min(BASELINE_FORMS, key=lambda name: errors[name])
    return _FITS[form](features, latency)


def _fit(
    goal: _Objective,
    features: np.ndarray,
    log_latency: np.ndarray,
    baseline: Baseline,
    seed: int,
    *,
    valid: tuple[np.ndarray, np.ndarray] | None = None,
    rounds: int | None = None,
) -> lgb.Booster:
    """One booster on top of the baseline; with `valid`, stops early on it, else trains `rounds`."""
    params = _params(goal, len(log_latency), seed)
    train_set = lgb.Dataset(
        features, log_latency, init_score=baseline.log_latency(features), feature_name=FEATURE_NAMES, params=params
    )
    if valid is None:
        num_rounds = rounds or min(_SMALL_DATA_ROUNDS, goal.max_rounds)
        return lgb.train(params, train_set, num_boost_round=num_rounds, keep_training_booster=True)
    valid_set = lgb.Dataset(
        valid[0], valid[1], init_score=baseline.log_latency(valid[0]), reference=train_set, params=params
    )
    return lgb.train(
        params,
        train_set,
        num_boost_round=goal.max_rounds,
        valid_sets=[valid_set],
        callbacks=[lgb.early_stopping(_EARLY_STOPPING_ROUNDS, verbose=False)],
        keep_training_booster=True,
    )


def _ordered(median_log: np.ndarray, lo_log: np.ndarray, hi_log: np.ndarray) -> tuple[np.ndarray, ...]:
    """Latencies in ms with lo <= median <= hi enforced (quantile models may cross the median)."""
    median = np.exp(median_log)
    return median, np.minimum(np.exp(lo_log), median), np.maximum(np.exp(hi_log), median)


@dataclass
class OpRegressor:
    """Median and 0.1 / 0.9 quantile boosters on log(latency_ms) for one op type."""

    op_type: str
    baseline: Baseline
    median_model: lgb.Booster
    lo_model: lgb.Booster
    hi_model: lgb.Booster
    # Log-space widening (lo, hi) calibrated on held-out data; quantile boosters alone under-cover.
    interval_shift: tuple[float, float] = (0.0, 0.0)

    def predict_features(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median_ms, lo_ms, hi_ms) for a feature matrix laid out as FEATURE_NAMES."""
        if len(features) == 0:
            empty = np.zeros(0, dtype=np.float64)
            return empty, empty.copy(), empty.copy()
        base = self.baseline.log_latency(features)
        median_log = base + self.median_model.predict(features, num_threads=1)
        lo_log = base + self.lo_model.predict(features, num_threads=1) - self.interval_shift[0]
        hi_log = base + self.hi_model.predict(features, num_threads=1) + self.interval_shift[1]
        median, lo, hi = _ordered(median_log, lo_log, hi_log)
        return median, lo, hi

    def predict(self, keys: Sequence[KernelKey]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median_ms, lo_ms, hi_ms) per key, with lo <= median <= hi."""
        return self.predict_features(features_matrix(keys))

    def to_text(self) -> str:
        """One text blob: a JSON header line, then the three LightGBM text models back to back."""
        parts = {
            "median": self.median_model.model_to_string(),
            "lo": self.lo_model.model_to_string(),
            "hi": self.hi_model.model_to_string(),
        }
        header = {
            "format": _TEXT_FORMAT,
            "version": _TEXT_VERSION,
            "op_type": self.op_type,
            "features": FEATURE_NAMES,
            "baseline": list(self.baseline.coefficients),
            "baseline_form": self.baseline.form,
            "interval_shift": list(self.interval_shift),
            "lengths": {name: len(parts[name]) for name in _PARTS},
        }
        return json.dumps(header, separators=(",", ":")) + "\n" + "".join(parts[name] for name in _PARTS)

    @classmethod
    def from_text(cls, text: str) -> OpRegressor:
        """Parse `to_text` output; InvalidRegressorError if malformed or trained on other features."""
        header_line, separator, body = text.partition("\n")
        try:
            header = json.loads(header_line)
        except json.JSONDecodeError as exc:
            raise InvalidRegressorError(f"regressor text has no JSON header line: {exc}") from exc
        if not isinstance(header, dict) or header.get("format") != _TEXT_FORMAT:
            raise InvalidRegressorError(f"not a {_TEXT_FORMAT!r} text (header {header_line[:80]!r})")
        if header.get("version") != _TEXT_VERSION:
            raise InvalidRegressorError(f"regressor text version {header.get('version')!r}, expected {_TEXT_VERSION}")
        if header.get("features") != FEATURE_NAMES:
            raise InvalidRegressorError(
                f"regressor for {header.get('op_type')!r} was trained on another feature set; retrain it"
            )
        lengths = header.get("lengths")
        if not separator or not isinstance(lengths, dict) or sum(lengths.get(n, 0) for n in _PARTS) != len(body):
            raise InvalidRegressorError("regressor text is truncated or its part lengths do not match")
        baseline = header.get("baseline")
        # Texts written before the additive form have no baseline_form: theirs is log-log.
        form = header.get("baseline_form", "loglog")
        if form not in BASELINE_FORMS or not isinstance(baseline, list) or len(baseline) != len(_BASELINE_COLUMNS) + 1:
            raise InvalidRegressorError(f"regressor for {header.get('op_type')!r} has a malformed baseline")
        shift = header.get("interval_shift", [0.0, 0.0])
        if not isinstance(shift, list) or len(shift) != 2:
            raise InvalidRegressorError(f"regressor for {header.get('op_type')!r} has a malformed interval_shift")
        boosters: dict[str, lgb.Booster] = {}
        offset = 0
        for name in _PARTS:
            part = body[offset : offset + int(lengths[name])]
            offset += int(lengths[name])
            try:
                boosters[name] = lgb.Booster(model_str=part)
            except lgb.basic.LightGBMError as exc:
                raise InvalidRegressorError(f"{name} model of {header.get('op_type')!r} does not load: {exc}") from exc
        return cls(
            op_type=str(header.get("op_type", "")),
            baseline=Baseline(form, tuple(float(c) for c in baseline)),
            median_model=boosters["median"],
            lo_model=boosters["lo"],
            hi_model=boosters["hi"],
            interval_shift=(float(shift[0]), float(shift[1])),
        )


def _accuracy(measured_ms: np.ndarray, median_ms: np.ndarray, lo_ms: np.ndarray, hi_ms: np.ndarray) -> dict[str, float]:
    """MAPE and hit rates as fractions (0.05 = 5%), plus the share of measurements inside [lo, hi]."""
    relative_error = np.abs(median_ms - measured_ms) / measured_ms
    return {
        "mape": float(np.mean(relative_error)),
        "within_10pct": float(np.mean(relative_error <= 0.10)),
        "within_5pct": float(np.mean(relative_error <= 0.05)),
        "interval_coverage": float(np.mean((lo_ms <= measured_ms) & (measured_ms <= hi_ms))),
    }


def _interval_shift(lo_ms: np.ndarray, hi_ms: np.ndarray, measured_ms: np.ndarray) -> tuple[float, float]:
    """Split-conformal log shifts (lo, hi) so that ~10% of measurements fall below lo and ~10% above hi."""
    n = len(measured_ms)
    log_measured = np.log(measured_ms)
    lo_level = min(1.0, math.ceil((n + 1) * (1.0 - LO_QUANTILE)) / n)
    hi_level = min(1.0, math.ceil((n + 1) * HI_QUANTILE) / n)
    lo_shift = float(np.quantile(np.log(lo_ms) - log_measured, lo_level, method="higher"))
    hi_shift = float(np.quantile(log_measured - np.log(hi_ms), hi_level, method="higher"))
    return lo_shift, hi_shift


def _cross_fitted_coverage(lo_ms: np.ndarray, hi_ms: np.ndarray, measured_ms: np.ndarray) -> float:
    """Coverage of calibrated intervals, each half of the hold-out calibrated on the other half (honest)."""
    n = len(measured_ms)
    halves = (np.arange(n) < n // 2, np.arange(n) >= n // 2)
    covered = 0
    for calibrate, evaluate in (halves, halves[::-1]):
        lo_shift, hi_shift = _interval_shift(lo_ms[calibrate], hi_ms[calibrate], measured_ms[calibrate])
        lo = lo_ms[evaluate] * math.exp(-lo_shift)
        hi = hi_ms[evaluate] * math.exp(hi_shift)
        measured = measured_ms[evaluate]
        covered += int(np.count_nonzero((lo <= measured) & (measured <= hi)))
    return covered / n


def _checked_latencies(keys: Sequence[KernelKey], latencies_ms: Sequence[float] | np.ndarray) -> np.ndarray:
    latency = np.asarray(latencies_ms, dtype=np.float64)
    if latency.ndim != 1 or len(latency) != len(keys):
        raise ValueError(f"got {len(keys)} keys but latencies of shape {latency.shape}")
    if not np.all(np.isfinite(latency)) or np.any(latency <= 0):
        raise ValueError("latencies_ms must be finite and > 0")
    return latency


def train_op_regressor(
    keys: Sequence[KernelKey], latencies_ms: Sequence[float] | np.ndarray, seed: int = 0,
    baseline_form: str | None = None,
    siblings: tuple[Sequence[KernelKey], Sequence[float] | np.ndarray] | None = None,
) -> tuple[OpRegressor, dict[str, Any]]:
    """Train the regressor of one op type; metrics come from a 20% hold-out, the returned model from all data.

    With fewer than 10 samples there is no hold-out: metrics are in-sample and `held_out` is False.
    `baseline_form` forces a baseline form (for comparisons); None chooses it per op type. `siblings`:
    (keys, latencies) of its SIBLING_OP_TYPES, added to every training part, never to the hold-out, so the
    metrics are the op type's own.
    Raises ValueError for mismatched lengths, fewer than 2 samples (siblings' included; one of the op type's own at
    least), non-positive latencies or mixed op types.
    """
    latency = _checked_latencies(keys, latencies_ms)
    if len(keys) < 1 or len(keys) + (len(siblings[0]) if siblings is not None else 0) < 2:
        raise ValueError(f"need at least 2 samples to train a regressor, got {len(keys)}")
    op_types = sorted({key.op_type for key in keys})
    if len(op_types) != 1:
        raise ValueError(f"one regressor covers one op type, got {op_types}")
    op_type = op_types[0]
    n_samples = len(latency)
    sibling_keys: list[KernelKey] = []
    if siblings is not None and len(siblings[0]):
        sibling_keys = list(siblings[0])
        allowed = set(SIBLING_OP_TYPES.get(op_type, ()))
        strangers = sorted({key.op_type for key in sibling_keys} - allowed)
        if strangers:
            raise ValueError(f"{strangers} are not sibling op types of {op_type} ({sorted(allowed)})")
        latency = np.concatenate([latency, _checked_latencies(sibling_keys, siblings[1])])
    features = features_matrix([*keys, *sibling_keys])
    log_latency = np.log(latency)
    extra = np.arange(n_samples, len(latency))

    metrics: dict[str, Any]
    interval_shift = (0.0, 0.0)
    if n_samples >= _MIN_HELD_OUT_SAMPLES:
        order = np.random.default_rng(seed).permutation(n_samples)
        n_test = max(1, int(round(n_samples * _TEST_SHARE)))
        test, train = order[:n_test], np.concatenate([order[n_test:], extra])
        train_baseline = fit_baseline(features[train], latency[train], baseline_form)
        valid = (features[test], log_latency[test])
        held_out = {
            goal.name: _fit(goal, features[train], log_latency[train], train_baseline, seed, valid=valid)
            for goal in _OBJECTIVES
        }
        rounds = {name: booster.best_iteration or booster.current_iteration() for name, booster in held_out.items()}
        evaluated = OpRegressor(op_type, train_baseline, held_out["median"], held_out["lo"], held_out["hi"])
        median_ms, lo_ms, hi_ms = evaluated.predict_features(features[test])
        metrics = {"n_train": len(train), "n_test": n_test, "held_out": True}
        metrics.update(_accuracy(latency[test], median_ms, lo_ms, hi_ms))
        metrics["raw_interval_coverage"] = metrics["interval_coverage"]
        if n_test >= _MIN_CALIBRATION_SAMPLES:
            interval_shift = _interval_shift(lo_ms, hi_ms, latency[test])
            metrics["interval_coverage"] = _cross_fitted_coverage(lo_ms, hi_ms, latency[test])
    else:
        rounds = {goal.name: min(_SMALL_DATA_ROUNDS, goal.max_rounds) for goal in _OBJECTIVES}
        metrics = {"n_train": len(latency), "n_test": 0, "held_out": False}
    baseline = fit_baseline(features, latency, baseline_form)
    boosters = {
        goal.name: _fit(goal, features, log_latency, baseline, seed, rounds=rounds[goal.name]) for goal in _OBJECTIVES
    }
    regressor = OpRegressor(op_type, baseline, boosters["median"], boosters["lo"], boosters["hi"], interval_shift)
    if not metrics["held_out"]:
        metrics.update(_accuracy(latency[:n_samples], *regressor.predict_features(features[:n_samples])))
    metrics["n_samples"] = n_samples
    metrics["n_sibling_samples"] = len(sibling_keys)
    metrics["rounds"] = rounds
    logger.debug("trained %s on %d samples: %s", op_type, n_samples, metrics)
    return regressor, metrics


def out_of_fold_latencies(
    keys: Sequence[KernelKey], latencies_ms: Sequence[float] | np.ndarray, folds: int = 4, seed: int = 0
) -> np.ndarray:
    """Each key's latency (ms) as the op type's median regressor predicts it when trained without that key.

    What a kernel of an unprofiled model would be predicted at: the profiler's adaptive refinement samples
    near the kernels where these predictions are worst. Keys of one op type, split into `folds` folds; where
    a fold's training part has fewer than 10 keys, the baseline alone (fitted on them) predicts.
    Cheaper than `train_op_regressor`: one booster per fold with a fixed budget, no hold-out or quantiles.
    """
    latency = _checked_latencies(keys, latencies_ms)
    n_samples = len(latency)
    if n_samples < 2:
        return latency.copy()
    features = features_matrix(keys)
    log_latency = np.log(latency)
    fold_of = np.random.default_rng(seed).permutation(n_samples) % max(2, min(folds, n_samples))
    predicted = np.empty(n_samples, dtype=np.float64)
    for fold in np.unique(fold_of):
        test, train = fold_of == fold, fold_of != fold
        baseline = fit_baseline(features[train], latency[train])
        guess = baseline.log_latency(features[test])
        if np.count_nonzero(train) >= _MIN_HELD_OUT_SAMPLES:
            booster = _fit(_OBJECTIVES[0], features[train], log_latency[train], baseline, seed,
                           rounds=_SMALL_DATA_ROUNDS)
            guess = guess + booster.predict(features[test], num_threads=1)
        predicted[test] = np.exp(guess)
    return predicted


def _data_version(rows: Sequence[tuple[int, float]]) -> str:
    """Short digest of the (measurement id, median_ms) rows a regressor was trained on."""
    digest = hashlib.sha256()
    for measurement_id, median_ms in sorted(rows):
        digest.update(f"{measurement_id}:{median_ms!r};".encode())
    return digest.hexdigest()[:_DATA_VERSION_CHARS]


@dataclass
class _OpData:
    """Measurements of one op type, collected per key hash."""

    keys: dict[str, KernelKey] = field(default_factory=dict)
    medians: dict[str, list[float]] = field(default_factory=dict)
    rows: list[tuple[int, float]] = field(default_factory=list)

    def training_set(self, context_factors: Mapping[str, float] | None = None
                     ) -> tuple[list[KernelKey], list[float]]:
        """Keys in key-hash order, each with the median of its run medians (over its context factor, if any)."""
        hashes = sorted(self.medians)
        factors = context_factors or {}
        return ([self.keys[h] for h in hashes],
                [statistics.median(self.medians[h]) / factors.get(h, 1.0) for h in hashes])


def _measurements_and_sets(session: Session, device: Device
                           ) -> tuple[dict[str, _OpData], dict[str, tuple[list[KernelKey], list[float]]]]:
    by_op = _collect_measurements(session, device)
    factors = _context_factors(session, device, by_op)
    return by_op, {op_type: data.training_set(factors) for op_type, data in by_op.items()}


def training_sets(session: Session, device: Device) -> dict[str, tuple[list[KernelKey], list[float]]]:
    """Each op type's own (keys, latencies_ms) as `train_device_regressors` trains on them (its siblings' beside)."""
    return _measurements_and_sets(session, device)[1]


def _context_factors(session: Session, device: Device, by_op: Mapping[str, _OpData]) -> dict[str, float] | None:
    """Each measured key's context factor where the device has a context model (predictor.estimation.context),
    else None.

    The regressors learn context-free latencies, as the loaded table holds them (predictor.estimation.estimate).
    """
    context = ContextModel.from_overhead(device.overhead)
    if context is None:
        return None
    hashes = [h for data in by_op.values() for h in data.keys]
    if not hashes:
        return {}
    features = features_matrix([data.keys[h] for data in by_op.values() for h in data.keys], cached=False)
    reports = reports_of(list_runs(session, device))
    factors = measured_context_factors(context, hashes, features[:, _BYTES_MOVED], features[:, _MACS], reports)
    return dict(zip(hashes, factors.tolist(), strict=True))


def _collect_measurements(session: Session, device: Device) -> dict[str, _OpData]:
    """The device's measurements grouped by op type; a key measured in several runs keeps all its medians."""
    by_op: dict[str, _OpData] = {}
    unreadable = 0
    for measurement in iter_measurements(session, device):
        data = by_op.setdefault(measurement.op_type, _OpData())
        if measurement.key_hash not in data.keys:
            try:
                data.keys[measurement.key_hash] = KernelKey.from_dict(measurement.key)
            except (KeyError, TypeError, ValueError) as exc:
                unreadable += 1
                logger.warning("measurement %d (%s): unreadable key, not trained on: %s",
                               measurement.id, measurement.key_hash, exc)
                continue
        data.medians.setdefault(measurement.key_hash, []).append(measurement.median_ms)
        data.rows.append((measurement.id, measurement.median_ms))
    if unreadable:
        logger.warning("device %r: %d measurements with unreadable keys were left out", device.name, unreadable)
    return by_op


def train_device_regressors(
    session: Session,
    device: Device,
    *,
    min_samples: int = 5,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Train and store one regressor per op type of the device; return {op_type: metrics}.

    A key measured in several runs counts once, with the median of its run medians. Op types with fewer
    than `min_samples` distinct keys, their siblings' (SIBLING_OP_TYPES) included, are not trained and map to
    {"skipped": "only N samples", ...}.
    `progress(op_type, done, total)` is called after each op type. Flushes, never commits.
    """
    if min_samples < 2:
        raise ValueError(f"min_samples must be >= 2 (a regressor needs two samples), got {min_samples}")
    by_op, sets = _measurements_and_sets(session, device)
    results: dict[str, dict[str, Any]] = {}
    total = len(by_op)
    for done, op_type in enumerate(sorted(by_op), start=1):
        data = by_op[op_type]
        n_samples = len(data.medians)
        sibling_ops = [name for name in SIBLING_OP_TYPES.get(op_type, ()) if name in by_op]
        n_siblings = sum(len(by_op[name].medians) for name in sibling_ops)
        if n_samples + n_siblings < min_samples:
            results[op_type] = {"skipped": f"only {n_samples} samples", "n_samples": n_samples}
            logger.info("device %r: %s skipped, only %d samples (< %d)", device.name, op_type, n_samples, min_samples)
        else:
            sibling_set = (([key for name in sibling_ops for key in sets[name][0]],
                            [ms for name in sibling_ops for ms in sets[name][1]]) if sibling_ops else None)
            regressor, metrics = train_op_regressor(*sets[op_type], siblings=sibling_set)
            # The version covers every row the regressor learned from, its siblings' too.
            metrics["data_version"] = _data_version(data.rows + [row for name in sibling_ops
                                                                 for row in by_op[name].rows])
            save_regressor(session, device, op_type, regressor.to_text(), metrics, metrics["data_version"])
            results[op_type] = metrics
            logger.info("device %r: %s trained on %d samples, held-out MAPE %.3f", device.name, op_type,
                        n_samples, metrics["mape"])
        if progress is not None:
            progress(op_type, done, total)
    return results


class RegressorSet:
    """All regressors of one device, parsed once; predicts batches of kernel keys of mixed op types."""

    def __init__(self, regressors: Mapping[str, OpRegressor], metrics: Mapping[str, dict[str, Any]] | None = None):
        self._regressors = dict(regressors)
        self.metrics: dict[str, dict[str, Any]] = dict(metrics or {})

    @classmethod
    def load(cls, session: Session, device: Device) -> RegressorSet:
        """Parse the device's stored regressors; ones that do not load (stale feature set) are left out, logged."""
        regressors: dict[str, OpRegressor] = {}
        metrics: dict[str, dict[str, Any]] = {}
        for op_type, stored in load_regressors(session, device).items():
            try:
                regressors[op_type] = OpRegressor.from_text(stored.model_text)
            except InvalidRegressorError as exc:
                logger.warning("device %r: regressor for %s not usable, retrain it: %s", device.name, op_type, exc)
                continue
            metrics[op_type] = dict(stored.metrics or {})
        return cls(regressors, metrics)

    @property
    def op_types(self) -> list[str]:
        """Op types with a usable regressor, sorted."""
        return sorted(self._regressors)

    def has(self, op_type: str) -> bool:
        """Whether a regressor for op_type is loaded."""
        return op_type in self._regressors

    def __getitem__(self, op_type: str) -> OpRegressor:
        return self._regressors[op_type]

    def predict(self, keys: Sequence[KernelKey]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(median_ms, lo_ms, hi_ms) per key, in order; KeyError naming the op types without a regressor.

        Keys are deduplicated and batched per op type: one feature matrix and three booster calls each.
        """
        positions: dict[str, dict[KernelKey, list[int]]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key.op_type, {}).setdefault(key, []).append(index)
        missing = sorted(op_type for op_type in positions if op_type not in self._regressors)
        if missing:
            raise KeyError(f"no regressor for op types {missing}")
        median = np.empty(len(keys), dtype=np.float64)
        lo = np.empty(len(keys), dtype=np.float64)
        hi = np.empty(len(keys), dtype=np.float64)
        for op_type, by_key in positions.items():
            unique = list(by_key)
            group_median, group_lo, group_hi = self._regressors[op_type].predict(unique)
            counts = [len(indices) for indices in by_key.values()]
            targets = np.fromiter((i for indices in by_key.values() for i in indices), dtype=np.intp)
            median[targets] = np.repeat(group_median, counts)
            lo[targets] = np.repeat(group_lo, counts)
            hi[targets] = np.repeat(group_hi, counts)
        return median, lo, hi
