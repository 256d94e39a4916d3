"""Where latpred's own data (op-space priors, kernel probes) lives: package data once installed."""
from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["packaged_data_dir"]

# setuptools installs the source tree's data/ as this package (setup.py maps it), editable installs included.
_DATA_PACKAGE = "latpred_data"


def packaged_data_dir() -> Path:
    """The directory holding priors/ and probes/: the installed `latpred_data` package, or the source tree's
    data/ when latpred runs from a checkout that was not installed."""
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parents[1] / "data"
