"""Memory of a loaded device predictor: bytes per table row held after `DevicePredictor.load`, and at its peak.

    .venv/bin/python benchmarks/memory.py --rows 100000 --out benchmarks/results/memory.json

Writes a synthetic table of N distinct kernel keys (tests/factories.py `kernel_measurement_rows`: fused convs,
Gemms, Adds, int8 depthwise convs) into a temporary SQLite store with the store API, then loads the
device's predictor in fresh child processes, so nothing the writing left behind is counted, after importing
what load imports (one-off costs, not per row). One child measures with tracemalloc (Python allocations
still alive after load and a full collection, with the predictor held; peak during load) and lists the
source lines that hold the most of what stays alive; another, without tracemalloc (whose bookkeeping
inflates RSS), the process RSS before and after load and the load time. Reported per row: retained and
peak tracemalloc bytes, RSS growth. Nothing is downloaded; no regressors are trained (load reads none).
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.kernels import KernelKey  # noqa: E402
from predictor.store import (  # noqa: E402
    MeasurementIn,
    add_measurements,
    create_store_engine,
    get_device,
    session_factory,
    session_scope,
    start_run,
    upgrade_schema,
    register_device,
)
from tests.factories import kernel_measurement_rows  # noqa: E402

DEVICE = "memory-bench"
BATCH_ROWS = 5000


def read_rss_bytes() -> int:
    """This process' resident set size (from /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def write_table(url: str, rows: int) -> None:
    """A device whose table holds `rows` distinct measured kernel keys (one run)."""
    engine = create_store_engine(url)
    upgrade_schema(engine)
    factory = session_factory(engine)
    measurements = []
    for row in kernel_measurement_rows(rows):
        key = KernelKey.from_dict(row["key"])  # type: ignore[arg-type]
        median = float(row["median_ms"])  # type: ignore[arg-type]
        measurements.append(MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type,
                                          bits=key.bits, median_ms=median, p10_ms=median * 0.9,
                                          p90_ms=median * 1.1, repeats=50))
    with session_scope(factory) as session:
        device = register_device(session, name=DEVICE, backend="onnxruntime", execution_provider="CPUExecutionProvider",
                               runtime_version="1.0", threads=1, host="benchmark")
        start_run(session, device, "synthetic")
        for start in range(0, len(measurements), BATCH_ROWS):
            add_measurements(session, device, "synthetic", measurements[start:start + BATCH_ROWS])
    engine.dispose()


def measure_load(url: str, traced: bool) -> dict[str, Any]:
    """Load the device's predictor once and report what it holds (run in a fresh process)."""
    # What load imports: counted once per process, not per row.
    import scipy.optimize  # noqa: F401

    from predictor.regressors import RegressorSet  # noqa: F401

    engine = create_store_engine(url)
    factory = session_factory(engine)
    with session_scope(factory) as session:  # the engine's pool and SQLAlchemy's caches
        get_device(session, DEVICE)
    gc.collect()
    if not traced:
        rss_before = read_rss_bytes()
        started = time.perf_counter()
        with session_scope(factory) as session:
            predictor = DevicePredictor.load(session, get_device(session, DEVICE))
        load_s = time.perf_counter() - started
        gc.collect()
        rss_after = read_rss_bytes()
        return {"load_s": round(load_s, 2),
                "rss_growth_bytes_per_row": round((rss_after - rss_before) / predictor.measurement_count, 1),
                "rss_before_mb": round(rss_before / 2**20, 1), "rss_after_mb": round(rss_after / 2**20, 1)}
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    with session_scope(factory) as session:
        predictor = DevicePredictor.load(session, get_device(session, DEVICE))
    gc.collect()
    _, peak = tracemalloc.get_traced_memory()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    rows = predictor.measurement_count
    retained = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    top = [{"line": f"{Path(stat.traceback[0].filename).name}:{stat.traceback[0].lineno}",
            "bytes_per_row": round(stat.size_diff / rows, 1), "blocks": stat.count_diff}
           for stat in after.compare_to(before, "lineno")[:8] if stat.size_diff > 0]
    return {
        "rows": rows,
        "retained_bytes_per_row": round(retained / rows, 1),
        "peak_bytes_per_row": round(peak / rows, 1),
        "top_retained": top,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "memory.json")
    parser.add_argument("--label", default="", help="what was measured (e.g. a commit), stored with the figures")
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)  # the children's part
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure_load(args.measure, args.traced)))
        return
    result: dict[str, Any] = {"command": f"benchmarks/memory.py --rows {args.rows}", "label": args.label}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.db"
        write_table(url, args.rows)
        for flags in (["--traced"], []):
            child = subprocess.run([sys.executable, __file__, "--measure", url, *flags], check=True,
                                   capture_output=True, text=True)
            result.update(json.loads(child.stdout.splitlines()[-1]))
    runs = json.loads(args.out.read_text()) if args.out.exists() else []
    runs.append(result)
    args.out.write_text(json.dumps(runs, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
