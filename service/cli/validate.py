"""`latpred measure` and `latpred validate`: models measured end to end on this host, and held against predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import onnx
import typer

from predictor.compression.apply import apply_config
from predictor.errors import LatpredError
from predictor.estimation.estimate import device_baselines
from predictor.estimation.validation import compensate, record_validations, summarize_validation, validate_models
from predictor.model.graph import load_model, model_inputs, parse_input_shapes, set_input_shapes
from predictor.store import get_device, session_scope
from profiler.backends.base import GROUND_TRUTH_PROTOCOL
from profiler.runner import measure_reference_ms
from service.cli.inputs import (
    fail,
    load_candidates,
    load_predictor,
    local_backend,
    open_cli_store,
    read_config,
    read_model,
)
from service.cli.options import ConfigOpt, DeviceOpt, InputShapeOpt, JsonOpt
from service.cli.output import emit_error, emit_json, emit_line, emit_table

__all__ = ["measure", "validate"]


def measure(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    config: ConfigOpt = None,
    input_shape: InputShapeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the compressed model for real and measure it end to end on this host."""
    onnx_model = read_model(model, input_shape)
    compression = read_config(config)
    store = open_cli_store()
    with store.sessions() as session:
        dev = get_device(session, device)
        baselines = device_baselines(session, dev)
    backend = local_backend(dev)
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
                "clock": backend.clock_name}
    if as_json:
        emit_json(document)
        return
    emit_line(f"{model.name} on {device}: {timing.median_ms:.3f} ms median "
              f"(p10 {timing.p10_ms:.3f}, p90 {timing.p90_ms:.3f}, {timing.repeats} runs, "
              f"{backend.clock_name.replace('_', ' ')} time)")
    if scaled is not None:
        emit_line(f"{scaled:.3f} ms in the device's baseline state, the figure `latpred predict` is held against "
                  f"(its {kind} reference kernel took {reference_now:.3f} ms now, {baselines[kind]:.3f} ms then)")


@dataclass(frozen=True)
class ModelSpec:
    """A `MODEL[:CANDIDATES]` argument of `latpred validate`."""

    model: Path
    candidates: Path | None

    @classmethod
    def parse(cls, argument: str) -> ModelSpec:
        """The whole argument is the model if it names a file or holds no colon; else split at the last colon."""
        if ":" not in argument or Path(argument).exists():
            return cls(Path(argument), None)
        model, _, candidates = argument.rpartition(":")
        if not model or not candidates:
            fail(f"bad model argument {argument!r}: expected MODEL or MODEL:CANDIDATES")
        return cls(Path(model), Path(candidates))


def validate(
    models: Annotated[list[str], typer.Argument(
        metavar="MODEL[:CANDIDATES]...",
        help="ONNX model files; MODEL.onnx:CANDIDATES.json validates that model under its own candidates "
             "instead of --configs")],
    device: DeviceOpt,
    configs: Annotated[Path | None, typer.Option(
        help="candidates for every model named without its own: a JSON list of {\"name\", \"config\"} or an "
             "object name -> config")] = None,
    input_shape: Annotated[list[str] | None, typer.Option(
        "--input-shape",
        help="fix a symbolic input of every model that has one of that name: NAME=1x3x224x224 (repeatable)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare predicted with measured latency for models, uncompressed and under candidate configs, on this host.

    A model or config that fails is named on stderr and the others are validated; the exit status is 2 if any
    failed. Every result is kept in the store (the dashboard shows them).
    """
    specs = [ModelSpec.parse(argument) for argument in models]
    shapes = parse_input_shapes(input_shape or [])
    shared_candidates = load_candidates(configs) if configs else []
    store = open_cli_store()
    with store.sessions() as session:
        dev = get_device(session, device)
        predictor = load_predictor(session, dev)
        runtime = dev.runtime
    backend = local_backend(dev)

    failed: list[dict[str, Any]] = []
    loaded: list[tuple[str, onnx.ModelProto, list[tuple[str, Any]]]] = []
    inputs_seen: set[str] = set()
    for spec in specs:
        name = spec.model.stem
        try:
            model = load_model(spec.model)
            inputs = model_inputs(model)
            inputs_seen |= set(inputs)
            symbolic = {name for name, dims in inputs.items() if not all(isinstance(d, int) for d in dims)}
            model = set_input_shapes(model, {k: v for k, v in shapes.items() if k in symbolic})
            candidates = load_candidates(spec.candidates) if spec.candidates else shared_candidates
        except LatpredError as exc:
            failed.append({"model": name, "config": None, "error": str(exc)})
            continue
        loaded.append((name, model, candidates))
    unused = sorted(set(shapes) - inputs_seen)
    if unused and inputs_seen:
        fail(f"--input-shape names {', '.join(unused)}, an input of none of the models")

    rows: list[dict[str, Any]] = []
    for name, model, candidates in loaded:
        result = validate_models(predictor, backend, runtime, [(name, model)], candidates, GROUND_TRUTH_PROTOCOL,
                                 reference_ms=lambda: measure_reference_ms(backend), skip_failed=True)
        rows += result["rows"]
        failed += result["failed"]
    with session_scope(store.sessions) as session:
        record_validations(session, get_device(session, device), rows)
    summary = summarize_validation(rows)
    if as_json:
        emit_json({"device": device, "rows": rows, "summary": summary,
                   "summary_raw": summarize_validation(rows, compensated=False), "failed": failed})
    elif rows:
        _print_validation(rows, summary)
    for failure in failed:
        what = f"model {failure['model']!r}" + (f", config {failure['config']!r}" if failure["config"] else "")
        emit_error(f"{what} failed: {failure['error']}")
    if failed:
        raise typer.Exit(2)


def _print_validation(rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    # The error is against the measurement scaled to the table's baseline state where there is one.
    emit_table(["model", "config", "predicted ms", "measured ms", "scaled ms", "error", "table hits"],
               [[r["model"], r["config"], r["predicted_ms"], r["measured_ms"],
                 "-" if r["compensated_measured_ms"] is None else r["compensated_measured_ms"],
                 f"{r['error'] * 100:+.1f}%", f"{r['table_hit_rate']:.0%}"] for r in rows])
    emit_line(f"{summary['count']} predictions: {summary['within_5pct'] * 100:.0f}% within 5%, "
              f"{summary['within_10pct'] * 100:.0f}% within 10%, MAPE {summary['mape'] * 100:.1f}%; "
              + (f"ranking agrees on {summary['ranking_agreement'] * 100:.0f}% of {summary['ranking_pairs']} pairs "
                 "that differ by more than 5%" if summary["ranking_agreement"] is not None
                 else "no pairs of configs that differ by more than 5% to rank"))
