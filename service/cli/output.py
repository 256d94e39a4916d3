"""The CLI's output layer, the only place in latpred that prints: results on stdout, one-line messages on stderr."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

__all__ = [
    "configure_logging",
    "emit_error",
    "emit_json",
    "emit_line",
    "emit_table",
    "emit_warning",
    "format_dims",
    "one_line",
]


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


def format_dims(shape: Any) -> str:
    """A shape as 1x3x224x224 ("?" unknown, "-" none: a kernel without weights)."""
    if shape is None:
        return "-"
    return "x".join(str(d) for d in shape) or "scalar"


def one_line(text: object) -> str:
    """Messages of underlying libraries can span lines; the CLI promises one."""
    return " ".join(str(text).split())


def emit_warning(text: str) -> None:
    sys.stderr.write(f"latpred: warning: {one_line(text)}\n")


def emit_error(text: str) -> None:
    sys.stderr.write(f"latpred: error: {one_line(text)}\n")


class _CliLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler `configure_logging` installs (found again and replaced on the next run in one process)."""


class _UserFormatter(logging.Formatter):
    """`latpred: warning: ...`, as the CLI's own messages read."""

    def format(self, record: logging.LogRecord) -> str:
        return f"latpred: {record.levelname.lower()}: {one_line(record.getMessage())}"


def configure_logging(debug: bool) -> None:
    """Log records on stderr: warnings and errors as one line each, or everything with its logger under --debug.

    Replaces the handler of an earlier run in this process (tests run the CLI many times) and leaves other
    handlers (pytest's) alone.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CliLogHandler)]:
        root.removeHandler(handler)
    handler = _CliLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s") if debug
                         else _UserFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
