"""The `latpred` app: its commands, --version and --debug, and how a run ends.

Exit status: 0 done; 2 the user's error (bad input, unknown device, bad config, unreachable store or service: a
LatpredError or a usage error), one line on stderr; 1 a bug (any other exception), one line saying so; 130
interrupted. --debug adds the traceback and debug logging.
"""
from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, NoReturn

import typer

from predictor.errors import LatpredError
from service.cli.demo import demo
from service.cli.devices import devices
from service.cli.migrate import migrate
from service.cli.output import configure_logging, emit_error, emit_line, one_line
from service.cli.predict import kernels, predict
from service.cli.profile import profile
from service.cli.rank import rank
from service.cli.serve import serve, worker
from service.cli.train import train
from service.cli.validate import measure, validate

__all__ = ["app", "main"]

app = typer.Typer(
    name="latpred",
    help="Hardware-aware latency prediction for compressed ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# In the order of the work: a device's table, questions about a model, checks on this host, the service.
for command in (profile, train, devices, kernels, predict, rank, measure, validate, demo, serve, worker, migrate):
    app.command()(command)


@dataclass
class _RunOptions:
    """What the options before the command chose, for `main` to end the run by."""

    debug: bool = False


_run = _RunOptions()


def _installed_version() -> str:
    try:
        return version("latpred")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        emit_line(f"latpred {_installed_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: Annotated[bool, typer.Option("--debug", help="debug logging, and the traceback of any error")] = False,
    show_version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                               help="print latpred's version and exit")] = False,
) -> None:
    """Hardware-aware latency prediction for compressed ONNX models."""
    _run.debug = debug
    configure_logging(debug)


def _is_usage_error(exc: Exception) -> bool:
    # Click's usage errors (a missing option, a bad value) by their interface: typer vendors its own click.
    return hasattr(exc, "format_message") and hasattr(exc, "exit_code")


def main(args: list[str] | None = None) -> NoReturn:
    """Console-script entry point: run one command and exit with its status (see the module docstring)."""
    _run.debug = False
    try:
        status = app(args=args, prog_name="latpred", standalone_mode=False)
    except LatpredError as exc:
        _end_with(exc, 2, one_line(exc))
    except typer.Abort:
        sys.stderr.write("latpred: aborted\n")
        sys.exit(130)
    except Exception as exc:
        if _is_usage_error(exc):
            message = one_line(exc.format_message())  # type: ignore[attr-defined]
            if not message:  # no command given: the help was shown, there is nothing more to say
                sys.exit(2)
            _end_with(exc, 2, message)
        _end_with(exc, 1, f"internal error, a bug in latpred: {type(exc).__name__}: {one_line(exc)} (run again "
                          "with --debug for the traceback, and report it)")
    sys.exit(status if isinstance(status, int) else 0)


def _end_with(exc: Exception, status: int, message: str) -> NoReturn:
    if _run.debug:
        traceback.print_exception(exc, file=sys.stderr)
    emit_error(message)
    sys.exit(status)
