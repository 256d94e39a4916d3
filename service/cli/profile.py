"""`latpred profile`: benchmark kernels on this host into a device's table, in the store or on a latpred service."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from predictor.runtime.devices import observe_kernel_profile
from predictor.runtime.optimizer import RuntimeSpec, describe_host
from predictor.store import register_device, session_scope
from profiler.calibration import calibrate_by_default
from profiler.plan import default_plan, model_plan
from profiler.progress import progress_reporter
from profiler.refine import AdaptiveRefinement
from profiler.runner import ProfileRunner
from profiler.sinks import HttpSink, StoreSink
from service.cli.inputs import fail, make_backend, open_cli_store, parse_candidates, read_model
from service.cli.options import URL_ENV, Backend, DeviceOpt, ExecutionProvider, InputShapeOpt, JsonOpt, TokenOpt
from service.cli.output import emit_json, emit_line

__all__ = ["profile"]


def profile(
    device: DeviceOpt,
    backend: Annotated[Backend, typer.Option(help="the runtime that measures")] = Backend.ONNXRUNTIME,
    threads: Annotated[int, typer.Option(min=1, help="intra-op threads, fixed for the device")] = 1,
    execution_provider: Annotated[ExecutionProvider, typer.Option(
        help="onnxruntime execution provider (this host must have it)")] = ExecutionProvider.CPU,
    budget_minutes: Annotated[float, typer.Option(min=0.01, help="time budget for this run")] = 30.0,
    for_model: Annotated[Path | None, typer.Option(help="profile exactly what this model needs")] = None,
    configs: Annotated[Path | None, typer.Option(
        help="candidate configs for --for-model: a JSON list of {\"name\", \"config\"} or an object name -> config")
    ] = None,
    input_shape: InputShapeOpt = None,
    to: Annotated[str | None, typer.Option(
        envvar=URL_ENV, help="post results to this latpred service URL instead of the local store")] = None,
    token: TokenOpt = None,
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
    if configs and not for_model:
        fail("--configs needs --for-model")
    if to and not to.startswith(("http://", "https://")):
        fail(f"--to takes the service's http:// or https:// URL, not {to!r}")
    profiler_backend = make_backend(backend, threads, execution_provider.value)
    runtime = profiler_backend.runtime()
    observer: AdaptiveRefinement | None = None
    if for_model:
        candidates = parse_candidates(configs) if configs else []
        model = read_model(for_model, input_shape)
        # The runtime must accept the model itself (not just its protobuf): say so now, not as a skipped item.
        profiler_backend.extract_kernels(model)
        items: Any = model_plan(model, for_model.stem, candidates)
    elif refinement:
        observer = AdaptiveRefinement()
        items = default_plan(then=observer.items())
    else:
        items = default_plan()
    device_fields: dict[str, Any] = {
        "name": device, "backend": runtime.backend, "execution_provider": runtime.execution_provider,
        "runtime_version": runtime.runtime_version, "threads": runtime.threads, "host": describe_host(),
        "kernel_profile": _observed_profile(runtime)}
    sink: HttpSink | StoreSink
    if to:
        sink = HttpSink(to, token, device)
        sink.register_device(device_fields)
    else:
        store = open_cli_store()
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


def _observed_profile(runtime: RuntimeSpec) -> dict[str, Any] | None:
    """What decides this host's kernels for the runtime (predictor.runtime.devices), recorded with the device it
    profiles."""
    if runtime.backend != "onnxruntime":
        return None
    return observe_kernel_profile(runtime).to_dict()
