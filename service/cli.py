"""The `latpred` command line: thin commands over the library, one output layer, exit 2 on bad input."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from predictor.errors import LatpredError, NoMeasurementsError
from predictor.graph import load_model, parse_input_shapes
from predictor.kernels import Kernel, extract_kernels
from predictor.runtime import RuntimeSpec
from predictor.store import count_measurements_by_op, get_device, list_devices, list_runs, load_regressors
from service.context import Store, open_store
from service.settings import get_settings

__all__ = ["app", "main"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="latpred",
    help="Hardware-aware latency prediction for compressed ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DeviceOpt = Annotated[str, typer.Option("--device", "-d", help="device name (see `latpred devices`)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout and nothing else")]
InputShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="fix a symbolic input: NAME=1x3x224x224 (repeatable)"),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="compression config JSON file")]


class UsageFailure(Exception):
    """Bad input detected by the CLI layer itself (exit 2)."""


def fail(message: str) -> NoReturn:
    raise UsageFailure(message)


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, sort_keys=False) + "\n")


def emit_line(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def emit_table(headers: list[str], rows: list[list[Any]]) -> None:
    """A plain aligned text table (readable in CI logs and terminals alike)."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        emit_line("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            emit_line("  ".join("-" * width for width in widths))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if value is None:
        return "-"
    return str(value)


def _open() -> Store:
    return open_store(get_settings())


def runtime_of(device: Any) -> RuntimeSpec:
    return RuntimeSpec(
        backend=device.backend,
        execution_provider=device.execution_provider,
        threads=device.threads,
        runtime_version=device.runtime_version,
    )


def kernel_rows(kernels: list[Kernel]) -> list[list[Any]]:
    return [
        [k.name, k.op_type, k.key.activation, "x".join(str(d) for d in (k.key.inputs[0] or ())) if k.key.inputs
         else "", "x".join(str(d) for d in (k.key.weight or ())), k.key.bits, k.key.sparsity, len(k.nodes)]
        for k in kernels
    ]


KERNEL_HEADERS = ["kernel", "op_type", "act", "input", "weight", "bits", "sparsity", "nodes"]


@app.command()
def devices(as_json: JsonOpt = False) -> None:
    """List devices with their runtime and table size."""
    store = _open()
    with store.sessions() as session:
        documents = []
        for device in list_devices(session):
            counts = count_measurements_by_op(session, device)
            runs = list_runs(session, device)
            documents.append({
                "name": device.name,
                "backend": device.backend,
                "execution_provider": device.execution_provider,
                "runtime_version": device.runtime_version,
                "threads": device.threads,
                "host": device.host,
                "measurements": sum(counts.values()),
                "op_types": len(counts),
                "regressors": sorted(load_regressors(session, device)),
                "runs": len(runs),
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


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    config: ConfigOpt = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict the model's latency on a device, per kernel and in total."""
    onnx_model = load_model(model)
    shapes = parse_input_shapes(input_shape or [])
    store = _open()
    with store.sessions() as session:
        dev = get_device(session, device)
        runtime = runtime_of(dev)
        measured = sum(count_measurements_by_op(session, dev).values())
    kernels = extract_kernels(onnx_model, runtime, shapes)
    if measured == 0:
        if not as_json:
            emit_line(f"{model.name}: {len(kernels)} kernels on {runtime.backend} "
                      f"{runtime.execution_provider} ({runtime.threads} threads)")
            emit_table(KERNEL_HEADERS, kernel_rows(kernels))
        raise NoMeasurementsError(
            f"no measurements for device {device}: run `latpred profile --device {device}` first"
        )
    _predict_with_table(model, dev, kernels, config, as_json)


def _predict_with_table(model: Path, device: Any, kernels: list[Kernel], config: Path | None, as_json: bool) -> None:
    raise NoMeasurementsError(
        f"device {device.name} has measurements, but the estimator is not built yet (issue: predictor)"
    )


def _not_yet(command: str, issue: str) -> NoReturn:
    fail(f"`latpred {command}` is not available yet ({issue})")


@app.command()
def profile(
    device: DeviceOpt,
    backend: Annotated[str, typer.Option(help="onnxruntime or tensorrt")] = "onnxruntime",
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads, fixed for the device")] = 1,
    budget_minutes: Annotated[float, typer.Option(min=0.01, help="time budget for this run")] = 30.0,
    for_model: Annotated[Path | None, typer.Option(help="profile exactly what this model needs")] = None,
    configs: Annotated[Path | None, typer.Option(help="candidate configs for --for-model")] = None,
    to: Annotated[str | None, typer.Option(help="post results to this latpred service URL")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --to")] = None,
) -> None:
    """Benchmark kernels on this host into the device's table (budgeted, resumable)."""
    _not_yet("profile", "profiler issue")


@app.command()
def train(device: DeviceOpt, as_json: JsonOpt = False) -> None:
    """Train the device's per-op-type regressors and print held-out error."""
    _not_yet("train", "predictor issue")


@app.command()
def measure(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    config: ConfigOpt = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the compressed model for real and measure it end to end on this host."""
    _not_yet("measure", "predictor issue")


@app.command()
def rank(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    configs: Annotated[Path, typer.Option(help="JSON list of {name, config} candidates")],
    target_speedup: Annotated[float | None, typer.Option(help="speedup a candidate must reach")] = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank candidate compression configs by predicted latency."""
    _not_yet("rank", "predictor issue")


@app.command()
def validate(
    models: Annotated[list[Path], typer.Argument(help="ONNX model files")],
    device: DeviceOpt,
    configs: Annotated[Path | None, typer.Option(help="candidate configs to validate as well")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare predicted with measured latency for models (and configs) on this host."""
    _not_yet("validate", "predictor issue")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
) -> None:
    """Run the REST service and dashboard."""
    _not_yet("serve", "service issue")


@app.command()
def demo() -> None:
    """The main job on the embedded default: profile a sample model, train, rank configs."""
    _not_yet("demo", "predictor issue")


def one_line(text: str) -> str:
    """Messages of underlying libraries can span lines; the CLI promises one."""
    return " ".join(text.split())


def main() -> None:
    """Console-script entry point: run the app, turning expected errors into one line and exit 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except (LatpredError, UsageFailure, ValueError) as exc:
        sys.stderr.write(f"latpred: error: {one_line(str(exc))}\n")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("latpred: aborted\n")
        sys.exit(130)
    except Exception as exc:  # click's usage errors and anything unexpected: one line, no traceback
        # typer may vendor its own click, so usage errors are recognised by their interface.
        if hasattr(exc, "format_message") and hasattr(exc, "exit_code"):
            sys.stderr.write(f"latpred: error: {one_line(exc.format_message())}\n")
            sys.exit(2)
        logger.debug("unexpected error", exc_info=True)
        sys.stderr.write(f"latpred: internal error: {type(exc).__name__}: {one_line(str(exc))}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
