"""latpred's core library; `from predictor import Predictor` is its Python API (predictor.api).

The names below are imported when first used, so that `import predictor` (and a device agent importing one of its
modules) stays fast: the API's answer types need no onnx, a local Predictor needs the runtime and the store.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from predictor.api import Predictor
    from predictor.client import AsyncLatpredClient, LatpredClient
    from predictor.compression.config import CompressionConfig
    from predictor.errors import LatpredError
    from predictor.estimation.results import Estimate, KernelEstimate, RankedCandidate, Ranking

__all__ = [
    "AsyncLatpredClient",
    "CompressionConfig",
    "Estimate",
    "KernelEstimate",
    "LatpredClient",
    "LatpredError",
    "Predictor",
    "RankedCandidate",
    "Ranking",
]

_MODULE_OF = {
    "AsyncLatpredClient": "predictor.client",
    "CompressionConfig": "predictor.compression.config",
    "Estimate": "predictor.estimation.results",
    "KernelEstimate": "predictor.estimation.results",
    "LatpredClient": "predictor.client",
    "LatpredError": "predictor.errors",
    "Predictor": "predictor.api",
    "RankedCandidate": "predictor.estimation.results",
    "Ranking": "predictor.estimation.results",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'predictor' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
