"""`latpred train`: a device's per-op-type regressors and overhead model, fitted on its table."""
from __future__ import annotations

from predictor.estimation.training import train_device
from predictor.store import get_device, session_scope
from service.cli.inputs import open_cli_store, require_measurements
from service.cli.options import DeviceOpt, JsonOpt
from service.cli.output import emit_json, emit_line, emit_table

__all__ = ["train"]


def train(device: DeviceOpt, as_json: JsonOpt = False) -> None:
    """Train the device's per-op-type regressors and print held-out error."""
    store = open_cli_store()
    with session_scope(store.sessions) as session:
        dev = get_device(session, device)
        require_measurements(session, dev)
        metrics, overhead = train_device(session, dev)
    if as_json:
        emit_json({"device": device, "regressors": metrics, "overhead": overhead})
        return
    rows = []
    for op_type, entry in sorted(metrics.items()):
        if "skipped" in entry:
            rows.append([op_type, None, None, None, entry["skipped"]])
        else:
            rows.append([op_type, entry["n_samples"], f"{entry['mape'] * 100:.1f}%",
                         f"{entry['within_10pct'] * 100:.0f}%", "held out" if entry.get("held_out") else "in-sample"])
    emit_table(["op_type", "samples", "MAPE", "within 10%", "evaluation"], rows)
    if overhead:
        emit_line(f"overhead: {overhead['per_run_ms']:.4f} ms per run + {overhead['per_kernel_ms']:.5f} ms per "
                  f"kernel, kernel scale {overhead['kernel_scale']:.3f} ({overhead['samples']} end-to-end samples, "
                  f"fit MAPE {overhead['fit_mape'] * 100:.1f}%)")
    else:
        emit_line("overhead: not enough end-to-end samples yet (profile some models)")
