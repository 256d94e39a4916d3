"""`latpred demo`: the main job end to end on the embedded store and this machine's CPU."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import onnx

from predictor.compression.config import parse_config
from predictor.estimation.estimate import DevicePredictor
from predictor.estimation.prepared import PreparedModel, rank_candidates
from predictor.estimation.training import train_device
from predictor.estimation.validation import measure_against_table, summarize_validation, validation_row
from predictor.runtime.optimizer import describe_host
from predictor.store import add_validation, get_device, open_store, register_device, session_scope
from profiler.backends.base import GROUND_TRUTH_PROTOCOL
from profiler.backends.onnxruntime import OnnxRuntimeBackend
from profiler.plan import DEFAULT_PRIORS_DIR, model_plan
from profiler.progress import progress_reporter
from profiler.runner import ProfileRunner, measure_reference_ms
from profiler.sinks import StoreSink
from profiler.skeleton import load_skeleton, materialize_skeleton
from service.settings import Settings

__all__ = ["DEMO_CANDIDATES", "DEMO_DEVICE", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_DEVICE = "this-cpu-1t"
SAMPLE_SKELETON = DEFAULT_PRIORS_DIR / "mobilenet_v2.json"
DEMO_CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("fp32", {}),
    ("fp16", {"default": {"bits": 16}}),
    ("int8", {"default": {"bits": 8}}),
    ("prune30", {"default": {"prune_ratio": 0.3}}),
    ("prune50", {"default": {"prune_ratio": 0.5}}),
    ("int8+prune30", {"default": {"bits": 8, "prune_ratio": 0.3}}),
    ("sparse90", {"default": {"sparsity": 0.9}}),
    ("mixed", {"default": {"bits": 8},
               "layers": {"/features/features.0/*": {"bits": 32}, "/classifier/*": {"bits": 32},
                          "/features/features.1[4-7]/*": {"prune_ratio": 0.5, "round_to": 8}}}),
]


def run_demo(settings: Settings, budget_minutes: float, as_json: bool, emit_line: Callable[[str], None],
             emit_json: Callable[[Any], None], emit_table: Callable[[list[str], list[list[Any]]], None]) -> None:
    """Profile what the sample model needs, train, rank the candidates, then measure each for real."""
    store = open_store(settings)
    backend = OnnxRuntimeBackend(threads=1)
    runtime = backend.runtime()
    with session_scope(store.sessions) as session:
        register_device(session, name=DEMO_DEVICE, backend=runtime.backend,
                        execution_provider=runtime.execution_provider, runtime_version=runtime.runtime_version,
                      threads=runtime.threads, host=describe_host())
    model = materialize_skeleton(load_skeleton(SAMPLE_SKELETON))
    sample_path = settings.home / "sample_mobilenet_v2.onnx"
    onnx.save(model, sample_path)
    candidates = [(name, parse_config(raw)) for name, raw in DEMO_CANDIDATES]
    say = (lambda text: None) if as_json else emit_line
    say(f"1/4 profiling what {sample_path.name} and {len(candidates)} configs need on {DEMO_DEVICE} "
        f"(budget {budget_minutes:.0f} min)")
    with progress_reporter("profiling") as progress:
        report = ProfileRunner(DEMO_DEVICE, backend, StoreSink(store.sessions, DEMO_DEVICE), progress=progress).run(
            model_plan(model, "sample_mobilenet_v2", candidates), budget_minutes)
    for line in report.summary_lines():
        say("    " + line)
    say("2/4 training regressors and the overhead model")
    with session_scope(store.sessions) as session:
        device = get_device(session, DEMO_DEVICE)
        metrics, overhead = train_device(session, device)
    trained = sorted(op for op, entry in metrics.items() if "skipped" not in entry)
    fitted = f"fitted on {overhead.get('samples', 0)} models" if overhead else "not fitted (too few models measured)"
    say(f"    {len(trained)} op-type regressors; overhead {fitted}")
    say("3/4 ranking the candidates (predicted)")
    with store.sessions() as session:
        predictor = DevicePredictor.load(session, get_device(session, DEMO_DEVICE))
    prepared = PreparedModel.create(model, runtime)
    ranking = rank_candidates(predictor, prepared, candidates)
    say("4/4 measuring every candidate for real on this machine")
    protocol = GROUND_TRUTH_PROTOCOL
    raw_ms: dict[str, float] = {}
    scaled_ms: dict[str, float | None] = {}
    for name, config in candidates:
        raw_ms[name], scaled_ms[name], _, _ = measure_against_table(
            backend, prepared.compressed(config), protocol, predictor.reference_baselines,
            lambda: measure_reference_ms(backend))
    # Judged against times scaled to the device's baseline state, as the table is: the host's load is not the
    # model's cost.
    truth = {name: scaled_ms[name] or raw_ms[name] for name in raw_ms}
    rows = []
    for entry in ranking["ranked"]:
        name = entry["name"]
        row = validation_row("sample_mobilenet_v2", name, entry["latency_ms"], raw_ms[name], scaled_ms[name],
                             entry.get("table_hit_rate", 0.0), list(entry["interval_ms"]))
        rows.append({**entry, **row, "measured_speedup": truth["fp32"] / truth[name]})

    with session_scope(store.sessions) as session:
        device = get_device(session, DEMO_DEVICE)
        for row in rows:
            add_validation(session, device, model_name=row["model"], config_name=row["config"],
                           predicted_ms=row["predicted_ms"], measured_ms=row["measured_ms"],
                           scaled_ms=row["compensated_measured_ms"])
    summary = summarize_validation(rows)
    store.close()
    if as_json:
        emit_json({"device": DEMO_DEVICE, "baseline_ms": ranking["baseline_ms"], "rows": rows, "summary": summary})
        return
    emit_table(
        ["config", "predicted ms", "interval ms", "speedup", "measured ms", "measured speedup", "error"],
        [[r["name"], r["latency_ms"], f"[{r['interval_ms'][0]:.2f}, {r['interval_ms'][1]:.2f}]",
          f"{r['speedup']:.2f}x", truth[r["name"]], f"{r['measured_speedup']:.2f}x", f"{r['error'] * 100:+.1f}%"]
         for r in rows])
    agreement = summary["ranking_agreement"]
    emit_line(f"{summary['within_10pct'] * 100:.0f}% of predictions within 10% (MAPE {summary['mape'] * 100:.1f}%), "
              f"ranking agrees on {'-' if agreement is None else f'{agreement * 100:.0f}%'} of "
              f"{summary['ranking_pairs']} pairs that differ by more than 5%")
