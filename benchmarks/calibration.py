"""The profiler's context calibration on this host, alone: the probes' rows and the context model they choose.

    .venv/bin/python benchmarks/calibration.py --out benchmarks/results/calibration.json

What `latpred profile --context-calibration` measures before its first item (profiler.calibration), with the
profiling protocol, and what `latpred train` then chooses from it (predictor.overhead).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.overhead import choose_context_from_probes  # noqa: E402
from profiler.backends.base import PROFILING_PROTOCOL  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from profiler.calibration import measure_context_probes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    started = time.monotonic()
    rows = measure_context_probes(OnnxRuntimeBackend(threads=1), PROFILING_PROTOCOL)
    elapsed_s = time.monotonic() - started
    for row in rows:
        print(f"{row['probe']:22s} chain {row['chain']:2d} round {row['round']}  {row['traffic_bytes'] / 1e6:5.1f} MB"
              f" per run  ratio {row['ratio']:.4f}", flush=True)
    model, figures = choose_context_from_probes(rows)
    print(f"{elapsed_s:.0f} s; context model {model}; {figures}")
    if args.out:
        args.out.write_text(json.dumps({"elapsed_s": elapsed_s, "context": model.to_dict() if model else None,
                                        "figures": figures, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
