"""`latpred devices`: the store's devices with their runtime and table size."""
from __future__ import annotations

from predictor.store import list_devices, summarize_device
from service.cli.inputs import open_cli_store
from service.cli.options import JsonOpt
from service.cli.output import emit_json, emit_line, emit_table

__all__ = ["devices"]


def devices(as_json: JsonOpt = False) -> None:
    """List devices with their runtime and table size."""
    store = open_cli_store()
    with store.sessions() as session:
        documents = []
        for device in list_devices(session):
            summary = summarize_device(session, device)
            documents.append({
                "name": device.name,
                "backend": device.backend,
                "execution_provider": device.execution_provider,
                "runtime_version": device.runtime_version,
                "threads": device.threads,
                "host": device.host,
                "measurements": summary.measurement_count,
                "op_types": len(summary.op_types),
                "regressors": sorted(summary.regressors),
                "runs": summary.run_count,
            })
    if as_json:
        emit_json({"devices": documents})
        return
    if not documents:
        emit_line("no devices yet: `latpred profile --device NAME ...` creates one")
        return
    emit_table(
        ["device", "backend", "provider", "runtime", "threads", "measurements", "op types", "runs"],
        [[d["name"], d["backend"], d["execution_provider"], d["runtime_version"], d["threads"],
          d["measurements"], d["op_types"], d["runs"]] for d in documents],
    )
