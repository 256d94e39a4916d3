"""The `latpred` command line: a module per command (or small family of commands) over the library.

main.py assembles the app and ends each run (exit 2 the user's errors, 1 bugs); options.py holds the options
commands share; inputs.py what they read (settings, store, models, configs); output.py is the only place that
prints.
"""
from __future__ import annotations

from service.cli.main import app, main

__all__ = ["app", "main"]
