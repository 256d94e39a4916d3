"""How much each kind of model's measured time follows the reference kernel's drift, from accuracy results.

    .venv/bin/python benchmarks/drift_slopes.py benchmarks/results/accuracy_run1{0,1,2}.json

Per result file and model group (fp32; int8 variants; other compressed variants), the least-squares slope of
log(measured / predicted) on log(measured / compensated measured), i.e. on the log of how much slower the
reference kernel the row was scaled by ran than at the device's baseline. The prediction is in the baseline
state, so a group whose times rise exactly as the reference's has slope 1 (the compensation takes the drift
out); slope below 1: the group slows less than the reference and scaling by it overcorrects.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def group_of(config: str) -> str:
    return "fp32" if config == "fp32" else ("int8" if "int8" in config else "other compressed")


def slopes(rows: list[dict]) -> dict[str, dict[str, float]]:
    """{group: {"rows", "slope", "drift_min", "drift_max"}} for the rows of one accuracy result."""
    out: dict[str, dict[str, float]] = {}
    for group in ("fp32", "int8", "other compressed"):
        chosen = [r for r in rows if group_of(r["config"]) == group and r.get("compensated_measured_ms")]
        if len(chosen) < 3:
            continue
        drift = np.log([r["measured_ms"] / r["compensated_measured_ms"] for r in chosen])
        error = np.log([r["measured_ms"] / r["predicted_ms"] for r in chosen])
        slope = float(np.polyfit(drift, error, 1)[0]) if np.ptp(drift) > 0 else float("nan")
        out[group] = {"rows": len(chosen), "slope": round(slope, 3), "drift_min": round(float(np.exp(drift.min())), 3),
                      "drift_max": round(float(np.exp(drift.max())), 3)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="accuracy result JSON files")
    args = parser.parse_args(argv)
    for path in args.results:
        for group, figures in slopes(json.loads(path.read_text())["rows"]).items():
            print(f"{path.name:24s} {group:17s} {figures['rows']:3.0f} rows  slope {figures['slope']:5.2f}  reference "
                  f"x{figures['drift_min']:.2f}..x{figures['drift_max']:.2f} of its baseline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
