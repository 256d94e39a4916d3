"""An accuracy run's predictions made again by this checkout's predictor, against the run's measurements.

    .venv/bin/python benchmarks/repredict.py --home /tmp/acc7-home \
        --results benchmarks/results/accuracy_run7.json --out benchmarks/results/repredict_run7.json

A change to the regressors or the estimate does not change what the profiler measured nor the validation
models' latencies: this script copies the run's store, trains the regressors and the overhead on the copy
with this checkout's code (`latpred train` as the run did), predicts every model and config of the run's
results again and summarizes them as benchmarks/accuracy.py does, against the measurements the run made.
Nothing is measured; extracting the kernels of the int8 variants runs the quantizer. The output names the
commit it was made at.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import accuracy  # noqa: E402
import zoo  # noqa: E402

from predictor.config import parse_config  # noqa: E402
from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.overhead import fit_overhead  # noqa: E402
from predictor.prepared import PreparedModel  # noqa: E402
from predictor.regressors import train_device_regressors  # noqa: E402
from predictor.store import create_store_engine, get_device, session_factory  # noqa: E402
from predictor.validation import validation_row  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


def commit() -> str:
    described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                               text=True, check=False)
    return described.stdout.strip() or "unknown"


def main() -> None:
    args = accuracy.finished_run_arguments(__doc__).parse_args()
    before = json.loads(args.results.read_text())
    with tempfile.TemporaryDirectory(prefix="latpred-repredict-") as scratch:
        copy = Path(scratch) / "latpred.db"
        shutil.copyfile(args.home / "latpred.db", copy)
        engine = create_store_engine(f"sqlite:///{copy}")
        with session_factory(engine)() as session:
            device = get_device(session, args.device)
            train_device_regressors(session, device)
            fit_overhead(session, device)
            session.commit()
            predictor = DevicePredictor.load(session, device)
        engine.dispose()

    runtime = OnnxRuntimeBackend(threads=1).runtime()
    prepared: dict[str, PreparedModel] = {}
    rows: list[dict[str, Any]] = []
    for old in before["rows"]:
        name, config_name = old["model"], old["config"]
        if name not in prepared:
            prepared[name] = PreparedModel.create(zoo.build_model(name, image_size=224), runtime)
        estimate = predictor.estimate(prepared[name].kernels(parse_config(accuracy.VARIANTS.get(config_name, {}))))
        row = validation_row(name, config_name, estimate.latency_ms, old["measured_ms"],
                             old["compensated_measured_ms"], estimate.table_hit_rate, list(estimate.interval_ms))
        row |= {"held_out": old["held_out"], "sources": estimate.sources, "reference_ms": old["reference_ms"],
                "macs": old["macs"], "error_before": old["error"]}
        rows.append(row)
        print(f"{name:22s} {config_name:14s} predicted {estimate.latency_ms:9.3f} ms (before"
              f" {old['predicted_ms']:9.3f})  error {row['error'] * 100:+6.1f}% (before {old['error'] * 100:+6.1f}%)",
              flush=True)
    summary, ms_per_gmac = accuracy.summarize(rows)
    result = {"results": str(args.results), "commit": commit(), "table_size": predictor.measurement_count,
              "summary": summary, "summary_before": before["summary"], "flops_proxy_ms_per_gmac": ms_per_gmac,
              "rows": rows}
    for part in ("fp32", "compressed", "fp32_held_out_archs", "ranking_of_variants"):
        now, then = summary[part], before["summary"][part]
        print(f"{part:22s} within ±10% {now['within_10pct']:6.1%} (before {then['within_10pct']:6.1%})  MAPE"
              f" {now['mape']:5.1%} (before {then['mape']:5.1%})  ranking {now['ranking_agreement']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
