"""The device's overhead outside kernels, learned from end-to-end runs of real models.

measured_ms ~ per_run_ms + per_kernel_ms x kernels + kernel_scale x sum(kernel medians), fitted by
non-negative least squares over the end-to-end samples the profiler recorded in its run reports.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from predictor.store import Device, list_runs, lookup_table, set_overhead

__all__ = ["fit_overhead"]

logger = logging.getLogger(__name__)

_MIN_SAMPLES = 3


def fit_overhead(session: Session, device: Device) -> dict[str, Any] | None:
    """Fit and store the device's overhead model; None when there are too few end-to-end samples."""
    table = lookup_table(session, device)
    rows: list[tuple[float, float, float]] = []
    for run in list_runs(session, device):
        for sample in (run.report or {}).get("end_to_end", []):
            hashes = sample.get("kernel_hashes") or []
            if not hashes or any(h not in table for h in hashes):
                continue
            rows.append((float(len(hashes)), sum(table[h] for h in hashes), float(sample["measured_ms"])))
    if len(rows) < _MIN_SAMPLES:
        return None
    data = np.array(rows)
    design = np.column_stack([np.ones(len(data)), data[:, 0], data[:, 1]])
    target = data[:, 2]
    # Relative errors matter (a 1 ms and a 100 ms model count alike): weight rows by 1/measured.
    weights = 1.0 / target
    from scipy.optimize import nnls

    coefficients, _ = nnls(design * weights[:, None], target * weights)
    per_run, per_kernel, scale = (float(c) for c in coefficients)
    predicted = design @ coefficients
    mape = float(np.mean(np.abs(predicted - target) / target))
    overhead = {"per_run_ms": per_run, "per_kernel_ms": per_kernel, "kernel_scale": scale,
                "samples": len(rows), "fit_mape": mape}
    set_overhead(session, device, overhead)
    logger.info("overhead of %s: %s", device.name, overhead)
    return overhead
