"""`latpred predict` and `latpred kernels`: a model's kernels as a device runs them, and their predicted latency."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from predictor.errors import NoMeasurementsError
from predictor.estimation.prepared import PreparedModel, predict_config
from predictor.kernels.keys import Kernel
from predictor.runtime.devices import categories_of
from predictor.runtime.optimizer import local_runtime
from predictor.store import get_device
from service.cli.inputs import device_kernels, open_cli_store, prepare_on_device, read_config, read_model
from service.cli.options import DEVICE_ENV, ConfigOpt, DeviceOpt, InputShapeOpt, JsonOpt
from service.cli.output import emit_json, emit_line, emit_table, emit_warning, format_dims

__all__ = ["kernels", "predict"]

ModelArg = Annotated[Path, typer.Argument(help="ONNX model file")]


def predict(
    model: ModelArg,
    device: DeviceOpt,
    config: ConfigOpt = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict the model's latency on a device, per kernel and in total."""
    compression = read_config(config)
    prepared, predictor = prepare_on_device(model, device, input_shape)
    runtime = prepared.runtime
    found = prepared.kernels(compression)
    if predictor is None:
        if not as_json:
            emit_line(f"{model.name}: {len(found)} kernels on {runtime.backend} "
                      f"{runtime.execution_provider} ({runtime.threads} threads)")
            emit_table(_KERNEL_HEADERS, _kernel_rows(found))
        raise NoMeasurementsError.for_device(device)
    estimate = predict_config(predictor, prepared, compression)
    document = {"model": str(model), "config": compression.model_dump(exclude_none=True), **estimate.to_dict()}
    if as_json:
        emit_json(document)
        return
    emit_table(["kernel", "op_type", "ms", "source"],
               [[k.name, k.op_type, k.latency_ms, k.source] for k in estimate.kernels])
    emit_line()
    emit_line(f"{model.name} on {device}: {estimate.latency_ms:.3f} ms "
              f"[{estimate.interval_ms[0]:.3f}, {estimate.interval_ms[1]:.3f}], "
              f"{len(estimate.kernels)} kernels, table hit rate {estimate.table_hit_rate:.0%}, "
              f"overhead {estimate.overhead_ms:.3f} ms")
    emit_line(_state_line(estimate.baseline_reference_ms))
    for warning in estimate.warnings:
        emit_warning(warning)


_KERNEL_HEADERS = ["kernel", "op_type", "act", "input", "weight", "bits", "sparsity", "nodes"]


def _kernel_rows(found: list[Kernel]) -> list[list[Any]]:
    return [[k.name, k.op_type, k.key.activation,
             "x".join(str(d) for d in (k.key.inputs[0] or ())) if k.key.inputs else "",
             "x".join(str(d) for d in (k.key.weight or ())), k.key.bits, k.key.sparsity, len(k.nodes)]
            for k in found]


def _state_line(baselines: dict[str, float]) -> str:
    """What a predicted figure means: steady-state latency in the device's baseline state."""
    if not baselines:
        return "steady-state latency on the device as its table was measured (runs not scaled)"
    fp32 = baselines.get("fp32")
    return ("steady-state latency in the device's baseline state (its reference kernel took "
            f"{fp32:.3f} ms when it was profiled; `latpred measure` scales its measurement to that state)"
            if fp32 is not None else "steady-state latency in the device's baseline state")


def kernels(
    model: ModelArg,
    config: ConfigOpt = None,
    device: Annotated[str | None, typer.Option(
        "--device", "-d", envvar=DEVICE_ENV,
        help="the kernels as this device builds them (default: this host's runtime)")] = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the kernels the runtime runs for a model: op type, key hash, shapes, and the model's nodes each covers.

    The node names are what a config's `layers` patterns match.
    """
    compression = read_config(config)
    onnx_model = read_model(model, input_shape)
    if device is None:
        runtime = local_runtime()
        where = f"this host ({runtime.backend} {runtime.runtime_version})"
    else:
        store = open_cli_store()
        with store.sessions() as session:
            built = device_kernels(get_device(session, device))
        built.check(categories_of(onnx_model, compression))
        runtime = built.runtime
        where = f"device {device}" + (f", built here without {', '.join(runtime.disabled_optimizers)}"
                                      if runtime.disabled_optimizers else "")
    found = PreparedModel.create(onnx_model, runtime).kernels(compression)
    if device is not None:
        built.check(categories_of(onnx_model, compression), {k.op_type for k in found})
    if as_json:
        emit_json({"model": str(model), "device": device, "runtime": runtime.to_dict(),
                   "config": compression.model_dump(exclude_none=True),
                   "kernels": [{"name": k.name, "op_type": k.op_type, "key_hash": k.key.key_hash,
                                "nodes": list(k.nodes), "inputs": k.key.to_dict()["inputs"],
                                "outputs": k.key.to_dict()["outputs"], "weight": k.key.to_dict()["weight"],
                                "bits": k.key.bits, "sparsity": k.key.sparsity, "key": k.key.to_dict()}
                               for k in found]})
        return
    emit_table(["kernel", "op_type", "key", "input", "output", "weight", "bits", "nodes"],
               [[k.name, k.op_type, k.key.key_hash[:12], format_dims(k.key.inputs[0] if k.key.inputs else None),
                 format_dims(k.key.outputs[0] if k.key.outputs else None), format_dims(k.key.weight), k.key.bits,
                 ", ".join(k.nodes) or "(inserted by the runtime)"] for k in found])
    emit_line()
    emit_line(f"{model.name}: {len(found)} kernels as {where} runs them")
