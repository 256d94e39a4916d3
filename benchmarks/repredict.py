"""An accuracy run's predictions made again by this checkout's predictor, against the run's measurements.

    .venv/bin/python benchmarks/repredict.py --home /tmp/acc7-home \
        --results benchmarks/results/accuracy_run7.json --out benchmarks/results/repredict_run7.json

A change to the regressors or the estimate does not change what the profiler measured nor the validation
models' latencies: this script copies the run's store, trains the regressors and the overhead on the copy
with this checkout's code (`latpred train` as the run did), predicts every model and config of the run's
results again and summarizes them as benchmarks/accuracy.py does, against the measurements the run made.
Nothing is measured; extracting the kernels of the int8 variants runs the quantizer. The output names the
commit it was made at. `--context` (repeatable) sets the context model (predictor.context) instead of
fitting it, to compare settings on the same measurements; with several, the output lists each.
"""
from __future__ import annotations

import argparse
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
from predictor.context import ContextModel  # noqa: E402
from predictor.estimate import DevicePredictor  # noqa: E402
from predictor.kernels import Kernel  # noqa: E402
from predictor.prepared import PreparedModel  # noqa: E402
from predictor.store import create_store_engine, get_device, session_factory  # noqa: E402
from predictor.training import train_device  # noqa: E402
from predictor.validation import validation_row  # noqa: E402
from profiler.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


def commit() -> str:
    described = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                               text=True, check=False)
    return described.stdout.strip() or "unknown"


def context_setting(text: str) -> ContextModel | None | str:
    """`--context`: "fit" (what `latpred train` does), "none", or BETA,BASE_MB,WIDTH_OCTAVES."""
    if text in ("fit", "none"):
        return None if text == "none" else "fit"
    try:
        beta, base_mb, width = (float(part) for part in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: use fit, none or BETA,BASE_MB,WIDTH_OCTAVES") from exc
    return ContextModel(beta, base_mb, width)


def trained_predictor(home: Path, device_name: str, context: Any) -> tuple[DevicePredictor, dict[str, Any] | None]:
    """The run's store copied, trained with this checkout's code (and `context`), and loaded."""
    with tempfile.TemporaryDirectory(prefix="latpred-repredict-") as scratch:
        copy = Path(scratch) / "latpred.db"
        shutil.copyfile(home / "latpred.db", copy)
        engine = create_store_engine(f"sqlite:///{copy}")
        with session_factory(engine)() as session:
            device = get_device(session, device_name)
            _, overhead = train_device(session, device, context=context)
            session.commit()
            predictor = DevicePredictor.load(session, device)
        engine.dispose()
    return predictor, overhead


def main() -> None:
    parser = accuracy.finished_run_arguments(__doc__)
    parser.add_argument("--context", type=context_setting, action="append", default=None,
                        help="fit (default), none, or BETA,BASE_MB,WIDTH_OCTAVES; repeat to compare settings")
    args = parser.parse_args()
    settings = args.context or ["fit"]
    before = json.loads(args.results.read_text())
    runtime = OnnxRuntimeBackend(threads=1).runtime()
    prepared: dict[str, PreparedModel] = {}
    kernels: list[list[Kernel]] = []
    for old in before["rows"]:
        if old["model"] not in prepared:
            prepared[old["model"]] = PreparedModel.create(zoo.build_model(old["model"], image_size=224), runtime)
        kernels.append(prepared[old["model"]].kernels(parse_config(accuracy.VARIANTS.get(old["config"], {}))))

    results = []
    for context in settings:
        predictor, overhead = trained_predictor(args.home, args.device, context)
        print(f"context {context}: overhead {overhead}", flush=True)
        rows: list[dict[str, Any]] = []
        for old, model_kernels in zip(before["rows"], kernels, strict=True):
            name, config_name = old["model"], old["config"]
            estimate = predictor.estimate(model_kernels)
            row = validation_row(name, config_name, estimate.latency_ms, old["measured_ms"],
                                 old["compensated_measured_ms"], estimate.table_hit_rate, list(estimate.interval_ms))
            row |= {"held_out": old["held_out"], "sources": estimate.sources, "reference_ms": old["reference_ms"],
                    "macs": old["macs"], "error_before": old["error"]}
            rows.append(row)
            print(f"{name:22s} {config_name:14s} predicted {estimate.latency_ms:9.3f} ms (before"
                  f" {old['predicted_ms']:9.3f})  error {row['error'] * 100:+6.1f}%"
                  f" (before {old['error'] * 100:+6.1f}%)", flush=True)
        summary, ms_per_gmac = accuracy.summarize(rows)
        results.append({"context": context if isinstance(context, str) or context is None else context.to_dict(),
                        "overhead": overhead, "table_size": predictor.measurement_count, "summary": summary,
                        "flops_proxy_ms_per_gmac": ms_per_gmac, "rows": rows})
        for part in ("fp32", "compressed", "fp32_held_out_archs", "ranking_of_variants"):
            now, then = summary[part], before["summary"][part]
            print(f"{part:22s} within ±10% {now['within_10pct']:6.1%} (before {then['within_10pct']:6.1%})  MAPE"
                  f" {now['mape']:5.1%} (before {then['mape']:5.1%})  ranking {now['ranking_agreement']}", flush=True)
    result: dict[str, Any] = {"results": str(args.results), "commit": commit(), "summary_before": before["summary"]}
    result |= results[0] if len(results) == 1 else {"settings": results}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
