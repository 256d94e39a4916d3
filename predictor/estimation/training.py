"""Training a device: its overhead and context model first, then its regressors on context-free latencies."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from sqlalchemy.orm import Session

from predictor.estimation.context import ContextModel
from predictor.estimation.overhead import fit_overhead
from predictor.estimation.regressors import train_device_regressors
from predictor.store import Device

__all__ = ["train_device"]


def train_device(session: Session, device: Device, *, progress: Callable[[str, int, int], None] | None = None,
                 context: ContextModel | None | Literal["fit"] = "fit",
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """(regressor metrics per op type, overhead or None); flushes, never commits.

    `context` is predictor.estimation.overhead.fit_overhead's: "fit" chooses the context model, else it is given.

    The order matters: the overhead fit chooses the context model (predictor.estimation.context) from the table alone,
    and the regressors learn the table's latencies with that context taken out.
    """
    overhead = fit_overhead(session, device, context=context)
    metrics = train_device_regressors(session, device, progress=progress)
    return metrics, overhead
