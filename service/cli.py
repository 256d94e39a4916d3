"""The `latpred` command line: thin commands over the library, one output layer, exit 2 on bad input."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from predictor.compress import apply_config
from predictor.config import CompressionConfig, load_config, parse_config
from predictor.devices import DeviceKernels, categories_of, kernels_for_device, observe_kernel_profile
from predictor.errors import ConfigError, LatpredError, NoMeasurementsError
from predictor.estimate import DevicePredictor, device_baselines
from predictor.graph import load_model, parse_input_shapes, set_input_shapes
from predictor.kernels import Kernel
from predictor.prepared import PreparedModel, predict_config, rank_candidates
from predictor.runtime import describe_host, local_runtime
from predictor.store import (
    add_validation,
    count_measurements_by_op,
    get_device,
    list_devices,
    list_runs,
    load_regressors,
    register_device,
    session_scope,
)
from predictor.validation import compensate
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
    compression = load_config(config) if config else CompressionConfig()
    prepared, predictor = _prepare(model, device, input_shape)
    runtime = prepared.runtime
    kernels = prepared.kernels(compression)
    if predictor is None:
        if not as_json:
            emit_line(f"{model.name}: {len(kernels)} kernels on {runtime.backend} "
                      f"{runtime.execution_provider} ({runtime.threads} threads)")
            emit_table(KERNEL_HEADERS, kernel_rows(kernels))
        raise NoMeasurementsError(
            f"no measurements for device {device}: run `latpred profile --device {device}` first"
        )
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
        sys.stderr.write(f"latpred: warning: {warning}\n")


def _state_line(baselines: dict[str, float]) -> str:
    """What a predicted figure means: steady-state latency in the device's baseline state."""
    if not baselines:
        return "steady-state latency on the device as its table was measured (runs not scaled)"
    fp32 = baselines.get("fp32")
    return ("steady-state latency in the device's baseline state (its reference kernel took "
            f"{fp32:.3f} ms when it was profiled; `latpred measure` scales its measurement to that state)"
            if fp32 is not None else "steady-state latency in the device's baseline state")


def _local_backend(device: Any) -> Any:
    """The backend that measures `device` on this host; refuses devices of another host or runtime."""
    from profiler.backends.onnxruntime import OnnxRuntimeBackend

    if device.backend != "onnxruntime":
        fail(f"device {device.name} uses {device.backend}; this host measures onnxruntime devices only")
    backend = OnnxRuntimeBackend(threads=device.threads, execution_provider=device.execution_provider)
    local = backend.runtime()
    if local.runtime_version != device.runtime_version:
        fail(f"device {device.name} runs onnxruntime {device.runtime_version}, this host has "
             f"{local.runtime_version}: measure on the device itself")
    return backend


def load_candidates(path: Path) -> list[tuple[str, CompressionConfig]]:
    """Candidate configs from a JSON file: a list of {"name", "config"} or an object name -> config."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(data, dict) and "candidates" in data:
        data = data["candidates"]
    if isinstance(data, dict):
        data = [{"name": name, "config": config} for name, config in data.items()]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of {{\"name\", \"config\"}} candidates")
    candidates = []
    for index, entry in enumerate(data):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"{path}: candidate {index} needs a \"name\" and a \"config\"")
        candidates.append((str(entry["name"]), parse_config(entry.get("config") or {})))
    return candidates


@app.command()
def profile(
    device: DeviceOpt,
    backend: Annotated[str, typer.Option(help="onnxruntime or tensorrt")] = "onnxruntime",
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads, fixed for the device")] = 1,
    execution_provider: Annotated[str, typer.Option(
        help="onnxruntime execution provider, e.g. CUDAExecutionProvider")] = "CPUExecutionProvider",
    budget_minutes: Annotated[float, typer.Option(min=0.01, help="time budget for this run")] = 30.0,
    for_model: Annotated[Path | None, typer.Option(help="profile exactly what this model needs")] = None,
    configs: Annotated[Path | None, typer.Option(help="candidate configs for --for-model")] = None,
    input_shape: InputShapeOpt = None,
    to: Annotated[str | None, typer.Option(help="post results to this latpred service URL")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --to")] = None,
    refinement: Annotated[bool, typer.Option(
        help="after the priors, draw variants near the worst-predicted models (else random variants)")] = True,
    context_calibration: Annotated[bool | None, typer.Option(
        "--context-calibration/--no-context-calibration",
        help="first measure, once per device, how memory-bound kernels slow down in bigger models (about a "
             "minute); default: on when profiling the default space with a budget of at least 5 minutes, "
             "off with --for-model")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Benchmark kernels on this host into the device's table (budgeted, resumable)."""
    from profiler.calibration import calibrate_by_default
    from profiler.plan import default_plan, model_plan
    from profiler.progress import progress_reporter
    from profiler.runner import ProfileRunner
    from profiler.sinks import HttpSink, StoreSink

    if configs and not for_model:
        fail("--configs needs --for-model")
    profiler_backend = make_backend(backend, threads, execution_provider)
    runtime = profiler_backend.runtime()
    if for_model:
        candidates = load_candidates(configs) if configs else []
        model = set_input_shapes(load_model(for_model), parse_input_shapes(input_shape or []))
        # The runtime must accept the model itself (not just its protobuf): say so now, not as a skipped item.
        profiler_backend.extract_kernels(model)
        items: Any = model_plan(model, for_model.stem, candidates)
        observer = None
    elif refinement:
        from profiler.refine import AdaptiveRefinement  # LightGBM: only where refinement fits regressors

        observer = AdaptiveRefinement()
        items = default_plan(then=observer.items())
    else:
        observer = None
        items = default_plan()
    device_fields = {"name": device, "backend": runtime.backend, "execution_provider": runtime.execution_provider,
                     "runtime_version": runtime.runtime_version, "threads": runtime.threads, "host": describe_host(),
                     "kernel_profile": _observed_profile(runtime)}
    if to:
        sink: Any = HttpSink(to, token, device)
        sink.register_device(device_fields)
    else:
        store = _open()
        with session_scope(store.sessions) as session:
            register_device(session, **device_fields)
        sink = StoreSink(store.sessions, device)
    with progress_reporter(f"profiling {device}") as progress:
        report = ProfileRunner(device, profiler_backend, sink, progress=progress, observer=observer,
                               calibrate_context=calibrate_by_default(context_calibration, for_model is not None,
                                                                      budget_minutes)).run(items, budget_minutes)
    if as_json:
        emit_json(report.to_dict() | {"end_to_end": len(report.end_to_end)})
        return
    for line in report.summary_lines():
        emit_line(line)


def _observed_profile(runtime: Any) -> dict[str, Any] | None:
    """What decides this host's kernels for the runtime (predictor.devices), recorded with the device it profiles."""
    if runtime.backend != "onnxruntime":
        return None
    return observe_kernel_profile(runtime).to_dict()


def make_backend(name: str, threads: int, execution_provider: str = "CPUExecutionProvider") -> Any:
    """The profiler backend of that name on this host (BackendUnavailableError says why not)."""
    from profiler.backends.base import BackendUnavailableError

    try:
        if name == "onnxruntime":
            from profiler.backends.onnxruntime import OnnxRuntimeBackend

            return OnnxRuntimeBackend(threads=threads, execution_provider=execution_provider)
        if execution_provider != "CPUExecutionProvider":
            fail(f"--execution-provider is an onnxruntime option; the {name} backend has none")
        if name == "tensorrt":
            from profiler.backends.tensorrt import TensorRTBackend

            return TensorRTBackend()
    except BackendUnavailableError as exc:
        fail(str(exc))
    fail(f"unknown backend {name!r}: use onnxruntime or tensorrt")


@app.command()
def train(device: DeviceOpt, as_json: JsonOpt = False) -> None:
    """Train the device's per-op-type regressors and print held-out error."""
    from predictor.training import train_device

    store = _open()
    with session_scope(store.sessions) as session:
        dev = get_device(session, device)
        if not count_measurements_by_op(session, dev):
            raise NoMeasurementsError(f"no measurements for device {device}: run `latpred profile` first")
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


def _prepare(model: Path, device: str, input_shape: list[str] | None
             ) -> tuple[PreparedModel, DevicePredictor | None]:
    """The model prepared on the device's runtime, and the device's predictor (None: no table yet)."""
    onnx_model = load_model(model)
    shapes = parse_input_shapes(input_shape or [])
    store = _open()
    with store.sessions() as session:
        dev = get_device(session, device)
        predictor = DevicePredictor.load(session, dev) if count_measurements_by_op(session, dev) else None
        runtime = predictor.runtime if predictor is not None and predictor.runtime else _device_kernels(dev).runtime
    return PreparedModel.create(onnx_model, runtime, shapes), predictor


def _device_kernels(dev: Any) -> DeviceKernels:
    """How this host builds the device's kernels (predictor.devices)."""
    return kernels_for_device(dev.name, dev.runtime, dev.kernel_profile,
                              local_runtime(dev.threads, dev.execution_provider))


@app.command()
def kernels(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    config: ConfigOpt = None,
    device: Annotated[str | None, typer.Option("--device", "-d", help="the kernels as this device builds them "
                                                                      "(default: this host's runtime)")] = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the kernels the runtime runs for a model: op type, key hash, shapes, and the model's nodes each covers.

    The node names are what a config's `layers` patterns match.
    """
    compression = load_config(config) if config else CompressionConfig()
    onnx_model = set_input_shapes(load_model(model), parse_input_shapes(input_shape or []))
    if device is None:
        runtime = local_runtime()
        where = f"this host ({runtime.backend} {runtime.runtime_version})"
    else:
        store = _open()
        with store.sessions() as session:
            built = _device_kernels(get_device(session, device))
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
               [[k.name, k.op_type, k.key.key_hash[:12], _dims(k.key.inputs[0] if k.key.inputs else None),
                 _dims(k.key.outputs[0] if k.key.outputs else None), _dims(k.key.weight), k.key.bits,
                 ", ".join(k.nodes) or "(inserted by the runtime)"] for k in found])
    emit_line()
    emit_line(f"{model.name}: {len(found)} kernels as {where} runs them")


def _dims(shape: Any) -> str:
    """A shape as 1x3x224x224 ("?" unknown, "-" none: a kernel without weights)."""
    if shape is None:
        return "-"
    return "x".join(str(d) for d in shape) or "scalar"


@app.command()
def measure(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    config: ConfigOpt = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the compressed model for real and measure it end to end on this host."""
    from profiler.backends.base import GROUND_TRUTH_PROTOCOL

    onnx_model = set_input_shapes(load_model(model), parse_input_shapes(input_shape or []))
    compression = load_config(config) if config else CompressionConfig()
    store = _open()
    with store.sessions() as session:
        dev = get_device(session, device)
        baselines = device_baselines(session, dev)
    backend = _local_backend(dev)
    from profiler.runner import measure_reference_ms

    timing = backend.measure_model(apply_config(onnx_model, compression), GROUND_TRUTH_PROTOCOL,
                                   reference=None if "int8" in baselines else "fp32")
    # How fast the host was: from the runs' paired reference runs, else timed right after.
    reference_now = timing.reference_ms or measure_reference_ms(backend)
    kind = timing.reference_kind if timing.reference_ms else "fp32"
    scaled = compensate(timing.median_ms, reference_now, baselines.get(kind))
    document = {"model": str(model), "device": device, "config": compression.model_dump(exclude_none=True),
                "measured_ms": timing.median_ms, "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms,
                "repeats": timing.repeats, "reference_ms": reference_now, "reference": kind,
                "baseline_reference_ms": baselines.get(kind), "scaled_ms": scaled,
                "clock": getattr(backend, "clock_name", "wall")}
    if as_json:
        emit_json(document)
        return
    emit_line(f"{model.name} on {device}: {timing.median_ms:.3f} ms median "
              f"(p10 {timing.p10_ms:.3f}, p90 {timing.p90_ms:.3f}, {timing.repeats} runs, "
              f"{document['clock'].replace('_', ' ')} time)")
    if scaled is not None:
        emit_line(f"{scaled:.3f} ms in the device's baseline state, the figure `latpred predict` is held against "
                  f"(its {kind} reference kernel took {reference_now:.3f} ms now, {baselines[kind]:.3f} ms then)")


@app.command()
def rank(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    configs: Annotated[Path, typer.Option(help="JSON list of {name, config} candidates")],
    target_speedup: Annotated[float | None, typer.Option(help="speedup a candidate must reach")] = None,
    input_shape: InputShapeOpt = None,
    fast: Annotated[bool, typer.Option("--fast", help="kernel-level configs, no runtime session each")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank candidate compression configs by predicted latency."""
    candidates = load_candidates(configs)
    prepared, predictor = _prepare(model, device, input_shape)
    if predictor is None:
        raise NoMeasurementsError(f"no measurements for device {device}: run `latpred profile --device {device}`")
    result = rank_candidates(predictor, prepared, candidates, target_speedup, fast=fast)
    if as_json:
        emit_json(result)
        return
    emit_line(f"{model.name} on {device}: baseline {result['baseline_ms']:.3f} ms")
    emit_table(["candidate", "ms", "interval", "speedup", "meets target", "table hits"],
               [[r["name"], r["latency_ms"], f"[{r['interval_ms'][0]:.2f}, {r['interval_ms'][1]:.2f}]",
                 f"{r['speedup']:.2f}x", r["meets_target"], f"{r['table_hit_rate']:.0%}"] for r in result["ranked"]])


@app.command()
def validate(
    models: Annotated[list[Path], typer.Argument(help="ONNX model files")],
    device: DeviceOpt,
    configs: Annotated[Path | None, typer.Option(help="candidate configs to validate as well")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare predicted with measured latency for models (and configs) on this host."""
    from predictor.validation import validate_models

    candidates = load_candidates(configs) if configs else []
    store = _open()
    with store.sessions() as session:
        dev = get_device(session, device)
        if not count_measurements_by_op(session, dev):
            raise NoMeasurementsError(f"no measurements for device {device}: run `latpred profile` first")
        predictor = DevicePredictor.load(session, dev)
        runtime = dev.runtime
    backend = _local_backend(dev)
    from profiler.backends.base import GROUND_TRUTH_PROTOCOL
    from profiler.runner import measure_reference_ms

    result = validate_models(predictor, backend, runtime, [(m.stem, load_model(m)) for m in models], candidates,
                             GROUND_TRUTH_PROTOCOL, reference_ms=lambda: measure_reference_ms(backend))
    with session_scope(store.sessions) as session:
        dev = get_device(session, device)
        for row in result["rows"]:
            add_validation(session, dev, model_name=row["model"], config_name=row["config"],
                           predicted_ms=row["predicted_ms"], measured_ms=row["measured_ms"],
                           scaled_ms=row["compensated_measured_ms"])
    if as_json:
        emit_json(result)
        return
    # The error is against the measurement scaled to the table's baseline state where there is one.
    emit_table(["model", "config", "predicted ms", "measured ms", "scaled ms", "error", "table hits"],
               [[r["model"], r["config"], r["predicted_ms"], r["measured_ms"],
                 "-" if r["compensated_measured_ms"] is None else r["compensated_measured_ms"],
                 f"{r['error'] * 100:+.1f}%", f"{r['table_hit_rate']:.0%}"] for r in result["rows"]])
    summary = result["summary"]
    emit_line(f"{summary['count']} predictions: {summary['within_5pct'] * 100:.0f}% within 5%, "
              f"{summary['within_10pct'] * 100:.0f}% within 10%, MAPE {summary['mape'] * 100:.1f}%; "
              + (f"ranking agrees on {summary['ranking_agreement'] * 100:.0f}% of {summary['ranking_pairs']} pairs "
                 "that differ by more than 5%" if summary["ranking_agreement"] is not None
                 else "no pairs of configs that differ by more than 5% to rank"))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes on the port (they share the "
                                                              "store: PostgreSQL for more than a few)")] = 1,
    job_worker: Annotated[bool, typer.Option(help="also run one `latpred worker` for the jobs the API queues "
                                                  "(--no-job-worker where workers run elsewhere)")] = True,
) -> None:
    """Run the REST service and dashboard (see docs/scale.md for several processes and hosts)."""
    from service.server import run_server

    run_server(host, port, workers=workers, job_worker=job_worker)


@app.command()
def worker(
    once: Annotated[bool, typer.Option(help="run the queued jobs, then exit")] = False,
    exit_with: Annotated[int | None, typer.Option(hidden=True, help="exit once this process is gone")] = None,
) -> None:
    """Run the background jobs (regressor training) that any service process queues in the store."""
    import signal
    import threading

    from service.worker import JobWorker

    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    job_worker = JobWorker(get_settings(), exit_with=exit_with)
    try:
        done = job_worker.run(stop, once=once)
    finally:
        job_worker.close()
    if once:
        emit_line(f"ran {done} job(s)")


@app.command()
def demo(
    minutes: Annotated[float, typer.Option(help="profiling budget for the sample model")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """The main job on the embedded default: profile a sample model, train, rank configs, check them."""
    from service.demo import run_demo

    run_demo(get_settings(), budget_minutes=minutes, as_json=as_json, emit_line=emit_line, emit_json=emit_json,
             emit_table=emit_table)


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
