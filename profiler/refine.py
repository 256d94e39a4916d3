"""Adaptive refinement: after the priors, profile variants near the models whose kernels the regressors predict worst.

nn-Meter and LitePred refine their samples where the predictor errs most. Here a sample is a whole model (a
prior at some input size, prune ratio, rounding and bit-width), so refinement works on models: every few
items it fits each op type's regressor on the measurements of this run so far, out of fold (each kernel
predicted by a regressor that never saw it: what a kernel of an unprofiled architecture would get), scores
every profiled model by the time-weighted error of its kernels, and draws the next models near the worst
ones (the same architecture and bit-width, a neighbouring input size, a prune ratio within 0.1). A share of
the draws stays random so that no part of the space is left for good.

It learns only from the items it sees in this run (`observe`): a resumed run, whose priors were measured
before, draws random variants until it has seen enough items of its own.
"""
from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from predictor.estimation.regressors import out_of_fold_latencies
from predictor.kernels.keys import KernelKey
from predictor.store import MeasurementIn
from profiler.plan import (
    DEFAULT_PRIORS_DIR,
    WorkItem,
    prior_index,
    random_variants,
    resizable_priors,
    sizes_for,
    variant_item,
)

__all__ = ["AdaptiveRefinement"]

logger = logging.getLogger(__name__)

_MIN_ITEMS = 12  # models seen before the first fit: fewer say little about where the regressors err
_MIN_KEYS_PER_OP = 10
_RATIO_STEP = 0.1
_MAX_PRUNE_RATIO = 0.7
_DECAY = 0.5  # a drawn model's weight until the next fit: the next draw goes elsewhere more often
_REPORTED = 5


@dataclass
class _Seen:
    """A profiled model: how to vary it, and its kernels (key hash, measured ms)."""

    item: WorkItem
    kernels: list[tuple[str, float]]


@dataclass
class _Fit:
    """The latest out-of-fold fit: per-op-type error and the worst-predicted models."""

    items: int = 0
    kernels: int = 0
    op_mape: dict[str, float] = field(default_factory=dict)
    worst: list[tuple[str, float]] = field(default_factory=list)


class AdaptiveRefinement:
    """Draws the models to profile after the priors: near the worst-predicted ones, some at random."""

    def __init__(self, priors_dir: Path = DEFAULT_PRIORS_DIR, seed: int = 0, refit_every: int = 10,
                 explore_share: float = 0.25) -> None:
        self.priors_dir = priors_dir
        self.refit_every = refit_every
        self.explore_share = explore_share
        self._rng = random.Random(seed)
        self._explore = random_variants(priors_dir, seed)
        self._entries = {entry["file"]: entry for entry in prior_index(priors_dir)}
        self._resizable = resizable_priors(priors_dir)
        self._keys: dict[str, KernelKey] = {}
        self._latency: dict[str, list[float]] = defaultdict(list)
        self._seen: list[_Seen] = []
        self._since_fit = 0
        self._fit: _Fit | None = None
        self._weights: list[float] = []
        self.refined = 0
        self.explored = 0

    def observe(self, item: WorkItem, rows: list[MeasurementIn]) -> None:
        """Record a profiled item's kernel measurements (the runner calls this after each item)."""
        for row in rows:
            if row.key_hash not in self._keys:
                self._keys[row.key_hash] = KernelKey.from_dict(row.key)
            self._latency[row.key_hash].append(row.median_ms)
        if item.prior_file in self._entries and not item.is_sparsity:
            self._seen.append(_Seen(item, [(row.key_hash, row.median_ms) for row in rows]))
        self._since_fit += 1

    def items(self) -> Iterator[WorkItem]:
        """Work items without end; each draw uses every observation made before it."""
        counter = 0
        while True:
            if self._since_fit >= self.refit_every or (self._fit is None and len(self._seen) >= _MIN_ITEMS):
                self._refit()
            if self._fit is None or not any(self._weights) or self._rng.random() < self.explore_share:
                self.explored += 1
                yield next(self._explore)
                continue
            counter += 1
            # Weights cover the models of the last fit; the ones seen since are scored at the next fit.
            index = self._rng.choices(range(len(self._weights)), weights=self._weights)[0]
            self._weights[index] *= _DECAY
            self.refined += 1
            yield self._neighbour(self._seen[index].item, counter)

    def summary(self) -> dict[str, Any]:
        """What refinement did, for the run report (RunReport.summary_lines renders it)."""
        fit = self._fit
        return {
            "refined_items": self.refined,
            "explored_items": self.explored,
            "models_seen": len(self._seen),
            "models_before_first_fit": _MIN_ITEMS,
            "fits": None if fit is None else {
                "items": fit.items,
                "kernels": fit.kernels,
                "worst_op_types": sorted(fit.op_mape.items(), key=lambda kv: -kv[1])[:_REPORTED],
                "worst_items": fit.worst[:_REPORTED],
            },
        }

    def _refit(self) -> None:
        """Out-of-fold latency of every kernel seen; each model's score is its kernels' weighted error."""
        self._since_fit = 0
        by_op: dict[str, list[str]] = defaultdict(list)
        for key_hash, key in self._keys.items():
            by_op[key.op_type].append(key_hash)
        predicted: dict[str, float] = {}
        fit = _Fit(items=len(self._seen), kernels=len(self._keys))
        for op_type, hashes in by_op.items():
            if len(hashes) < _MIN_KEYS_PER_OP:
                continue  # too few to fit: such kernels do not steer refinement
            measured = np.array([float(np.median(self._latency[h])) for h in hashes])
            oof = out_of_fold_latencies([self._keys[h] for h in hashes], measured)
            predicted.update(zip(hashes, oof.tolist(), strict=True))
            fit.op_mape[op_type] = float(np.mean(np.abs(oof - measured) / measured))
        scores = [_weighted_error(seen.kernels, predicted) for seen in self._seen]
        fit.worst = sorted(((seen.item.label, round(score, 4)) for seen, score in zip(self._seen, scores, strict=True)),
                           key=lambda kv: -kv[1])
        # Squared: the draws concentrate on the worst models rather than spreading like the scores do.
        self._weights = [score ** 2 for score in scores]
        self._fit = fit
        logger.info("refinement fit on %d models, %d kernels; worst: %s", fit.items, fit.kernels, fit.worst[:3])

    def _neighbour(self, item: WorkItem, counter: int) -> WorkItem:
        """A variant near `item`: same architecture, bits and tool, a neighbouring size, a nearby prune ratio."""
        entry = self._entries[item.prior_file]
        spec = item.config.default
        size = item.size or int(entry["size"])
        sizes = sorted({*sizes_for(entry), int(entry["size"])})
        if item.prior_file in self._resizable and size in sizes:
            position = sizes.index(size) + self._rng.choice([-1, 0, 0, 1])
            size = sizes[min(len(sizes) - 1, max(0, position))]
        ratio = (spec.prune_ratio or 0.0) + self._rng.uniform(-_RATIO_STEP, _RATIO_STEP)
        ratio = min(_MAX_PRUNE_RATIO, max(0.0, ratio))
        default: dict[str, Any] = {**spec.model_dump(exclude_none=True), "bits": spec.bits or 32,
                                   "prune_ratio": round(ratio, 2)}
        return variant_item(self.priors_dir, entry, size, {"default": default}, "refine", f"refine{counter}",
                            seed=100_000 + counter, batch=item.batch, tool=item.tool)


def _weighted_error(kernels: list[tuple[str, float]], predicted: dict[str, float]) -> float:
    """A model's score: its kernels' absolute out-of-fold error over its kernels' total time."""
    total = sum(ms for _, ms in kernels)
    missed = sum(abs(predicted[h] - ms) for h, ms in kernels if h in predicted)
    return missed / total if total > 0 else 0.0
