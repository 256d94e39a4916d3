"""`latpred demo`: the main job end to end on the embedded store and this machine's CPU (service.demo)."""
from __future__ import annotations

from typing import Annotated

import typer

from service.cli.inputs import load_settings
from service.cli.options import JsonOpt
from service.cli.output import emit_json, emit_line, emit_table
from service.demo import run_demo

__all__ = ["demo"]


def demo(
    minutes: Annotated[float, typer.Option(min=0.01, help="profiling budget for the sample model")] = 5.0,
    as_json: JsonOpt = False,
) -> None:
    """The main job on the embedded default: profile a sample model, train, rank configs, check them."""
    run_demo(load_settings(), budget_minutes=minutes, as_json=as_json, emit_line=emit_line, emit_json=emit_json,
             emit_table=emit_table)
