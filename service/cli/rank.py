"""`latpred rank`: candidate compression configs ranked by predicted latency, as REST ranks them."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from predictor.errors import NoMeasurementsError
from predictor.estimation.prepared import rank_candidates
from service.cli.inputs import load_candidates, prepare_on_device
from service.cli.options import DeviceOpt, InputShapeOpt, JsonOpt
from service.cli.output import emit_error, emit_json, emit_line, emit_table, emit_warning

__all__ = ["rank"]


def rank(
    model: Annotated[Path, typer.Argument(help="ONNX model file")],
    device: DeviceOpt,
    configs: Annotated[Path, typer.Option(
        help="candidates: a JSON list of {\"name\", \"config\"} or an object name -> config")],
    target_speedup: Annotated[float | None, typer.Option(help="speedup a candidate must reach")] = None,
    input_shape: InputShapeOpt = None,
    exact: Annotated[bool, typer.Option(
        "--exact/--fast",
        help="--exact compresses and optimizes each candidate for real (a runtime session each); --fast, the "
             "default and what the REST API answers, takes kernels from the model's learned transformations")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank candidate compression configs by predicted latency, fastest first.

    A candidate that fails (a bad config, kernels the device cannot reproduce) is named on stderr and the others
    are ranked; the exit status is 2 if any failed.
    """
    candidates = load_candidates(configs)
    prepared, predictor = prepare_on_device(model, device, input_shape)
    if predictor is None:
        raise NoMeasurementsError.for_device(device)
    result = rank_candidates(predictor, prepared, candidates, target_speedup, fast=not exact, skip_failed=True)
    if as_json:
        emit_json(result)
    else:
        emit_line(f"{model.name} on {device}: baseline {result['baseline_ms']:.3f} ms")
        emit_table(["candidate", "ms", "interval", "speedup", "meets target", "table hits"],
                   [[r["name"], r["latency_ms"], f"[{r['interval_ms'][0]:.2f}, {r['interval_ms'][1]:.2f}]",
                     f"{r['speedup']:.2f}x", r["meets_target"], f"{r['table_hit_rate']:.0%}"]
                    for r in result["ranked"]])
        for row in result["ranked"]:
            for warning in row["warnings"]:
                emit_warning(f"{row['name']}: {warning}")
    for failure in result["failed"]:
        emit_error(f"candidate {failure['name']!r} failed: {failure['error']}")
    if result["failed"]:
        raise typer.Exit(2)
