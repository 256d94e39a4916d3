"""The dashboard's HTML pages, rendered on the server from plain data; charts are drawn by dashboard.js."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from service.dashboard.markup import (
    Safe,
    esc,
    fmt_count,
    fmt_ms,
    fmt_pct,
    fmt_time,
    join,
    layout,
    link,
    table,
    url_segment,
)

__all__ = [
    "CANDIDATE_PRESETS",
    "DeviceOverview",
    "LastRun",
    "ModelOption",
    "device_href",
    "render_device",
    "render_devices",
    "render_error",
    "render_models",
]

# Candidate configs offered on the model page; the uncompressed model is always the baseline.
CANDIDATE_PRESETS: list[tuple[str, dict[str, Any]]] = [
    ("fp16", {"default": {"bits": 16}}),
    ("int8", {"default": {"bits": 8}}),
    ("int4 (weights, MatMul/Gemm)", {"default": {"bits": 4}}),
    ("prune30", {"default": {"prune_ratio": 0.3}}),
    ("prune50", {"default": {"prune_ratio": 0.5}}),
    ("int8+prune30", {"default": {"bits": 8, "prune_ratio": 0.3}}),
    ("sparse50", {"default": {"sparsity": 0.5}}),
    ("sparse90", {"default": {"sparsity": 0.9}}),
    ("2:4 sparse", {"default": {"sparsity": 0.5, "sparsity_pattern": "2:4"}}),
]
_DEFAULT_PRESETS = {"fp16", "int8", "prune30", "int8+prune30", "sparse90"}
_THIN_KERNELS = 20
_OPS_LISTED = 6


@dataclass(frozen=True)
class LastRun:
    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class DeviceOverview:
    """One device as the devices page lists it."""

    name: str
    backend: str
    execution_provider: str
    runtime_version: str
    threads: int
    host: str
    created_at: datetime
    measurements: int
    op_types: list[str]
    accuracy: dict[str, Any]
    last_run: LastRun | None = None
    runs: int = 0
    validations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelOption:
    id: str
    name: str
    size_bytes: int
    kernels: int
    created_at: datetime


def device_href(name: str) -> str:
    return f"/devices/{url_segment(name)}"


def _threads(threads: int) -> str:
    return "runtime default" if threads == 0 else str(threads)


def _accuracy_cell(accuracy: dict[str, Any]) -> Safe:
    within, mape = accuracy.get("within_10pct"), accuracy.get("mape")
    if within is None or mape is None:
        if accuracy.get("in_sample_ops"):
            return Safe(f'<span class="warn" title="no held-out test data yet">in-sample only '
                        f'({esc(accuracy["in_sample_ops"])} op types)</span>')
        return Safe('<span class="muted">no regressors</span>')
    level = "good" if within >= 0.8 else ("warn" if within >= 0.5 else "bad")
    return Safe(f'<span class="{level}" title="held out: {esc(accuracy["n_test"])} kernels, '
                f'{esc(accuracy["held_out_ops"])} op types">{esc(fmt_pct(within))} within ±10%, '
                f"MAPE {esc(fmt_pct(mape))}</span>")


def _last_run_cell(run: LastRun | None) -> Safe:
    if run is None:
        return Safe('<span class="muted">never profiled</span>')
    css = {"finished": "good", "running": "warn"}.get(run.status, "bad")
    return Safe(f'{esc(fmt_time(run.finished_at or run.started_at))} <span class="{css}">{esc(run.status)}</span>')


def render_devices(devices: Sequence[DeviceOverview]) -> str:
    """The devices page: every device with its runtime, table size, coverage and regressor accuracy."""
    rows = []
    for device in devices:
        ops = device.op_types
        more = f", … ({len(ops) - _OPS_LISTED} more)" if len(ops) > _OPS_LISTED else ""
        shown = ", ".join(ops[:_OPS_LISTED]) + more
        ops_cell = Safe(f'<span title="{esc(", ".join(ops))}">{esc(len(ops))}</span> <small>{esc(shown)}</small>'
                        ) if ops else esc(0)
        rows.append([
            link(device_href(device.name), device.name, **{"class": "device-link"}),
            Safe(f"{esc(device.backend)}<br><small>{esc(device.execution_provider)}</small>"),
            device.runtime_version,
            _threads(device.threads),
            fmt_count(device.measurements),
            ops_cell,
            _last_run_cell(device.last_run),
            _accuracy_cell(device.accuracy),
        ])
    body = Safe(
        "<h1>Devices</h1>"
        '<p class="lead">Each device is one runtime set-up (hardware, runtime version, execution provider, threads); '
        "tables never mix devices. Open one to see what is profiled and how far its predictions can be trusted.</p>"
        + table(["device", "backend", "runtime version", "threads", "measurements", "op types", "last profiling run",
                 "regressor accuracy (held out)"], rows, table_id="devices",
                empty="no devices yet: run `latpred profile --device NAME` or `latpred demo`")
    )
    return layout("Devices", body, page="devices")


def _card(label: str, value: object, note: object = None) -> Safe:
    note_html = f"<small>{esc(note)}</small>" if note is not None else ""
    return Safe(f'<div class="card"><div class="label">{esc(label)}</div><div class="value">{esc(value)}</div>'
                f"{note_html}</div>")


def _regressor_cell(metrics: dict[str, Any] | None) -> Safe:
    if metrics is None:
        return Safe('<span class="muted">none</span>')
    if "mape" not in metrics:
        return esc(metrics.get("skipped", "trained"))
    held_out = bool(metrics.get("held_out"))
    within = metrics.get("within_10pct")
    level = "muted" if not held_out else ("good" if (within or 0) >= 0.8 else "warn" if (within or 0) >= 0.5
                                          else "bad")
    scope = f"held out on {metrics.get('n_test', 0)}" if held_out else "in-sample"
    return Safe(f'<span class="{level}">MAPE {esc(fmt_pct(metrics["mape"]))}, {esc(fmt_pct(within))} within ±10%'
                f"</span> <small>({esc(scope)} of {esc(metrics.get('n_samples', '?'))})</small>")


def _coverage_table(coverage: Sequence[dict[str, Any]]) -> Safe:
    rows = []
    for row in coverage:
        kernels = row["kernels"]
        kernels_cell = Safe(f'<span class="warn" title="few kernels: predictions lean on the regressor">'
                            f"{esc(kernels)}</span>") if kernels < _THIN_KERNELS else esc(kernels)
        macs = (f"{fmt_count(row['macs_min'])} – {fmt_count(row['macs_max'])}"
                if row["macs_min"] is not None else None)
        rows.append([
            Safe(f"<code>{esc(row['op_type'])}</code>"),
            row["measurements"],
            kernels_cell,
            row["shapes"],
            join((f"int{bits}" if bits <= 8 else f"fp{bits}" for bits in row["bits"]), ", ") or None,
            join((f"{sparsity:g}" for sparsity in row["sparsities"]), ", ") or None,
            macs,
            _regressor_cell(row["regressor"]),
            ", ".join(row["flat_axes"]) or None,
        ])
    return table(["op type", "measurements", "kernels", "shapes", "bit-widths", "sparsities", "MACs", "regressor",
                  "flat axes"], rows, table_id="coverage", empty="no measurements on this device yet")


def _runs_table(runs: Sequence[dict[str, Any]], run_times: dict[str, tuple[datetime, datetime | None]]) -> Safe:
    rows = []
    for run in reversed(runs):
        started, finished = run_times.get(run["run_id"], (None, None))
        if run["drift_checks"]:
            drift: Safe = Safe(f'<span class="bad drift-flag">DRIFT {esc(fmt_pct(run["worst_drift_ratio"] - 1, True))}'
                               f" at {esc(round(run['worst_drift_at_s'] or 0))} s</span> "
                               f"<small>({esc(run['drift_checks'])} checks over threshold)</small>")
        elif run["reference_ms"] is not None:
            drift = Safe(f'<span class="good">stable</span> <small>(reference {esc(fmt_ms(run["reference_ms"]))})'
                         "</small>")
        else:
            drift = Safe('<span class="muted">not checked</span>')
        if run["remeasured"]:
            count = run["remeasured"]
            drift = Safe(f"{drift} <small>({esc(count)} model{'s' if count != 1 else ''} measured again after a "
                         "spell or a slow phase of the host)</small>")
        flat = "; ".join(f"{op}: {', '.join(axes)}" for op, axes in run["flat_axes"].items())
        rows.append([Safe(f"<code>{esc(run['run_id'][:12])}</code>"), run["status"], fmt_time(started),
                     fmt_time(finished), run["measured"], run["stopped_by"] or None, drift, flat or None])
    return table(["run", "status", "started", "finished", "kernels measured", "stopped by", "drift", "flat axes"],
                 rows, table_id="runs", empty="no profiling runs recorded")


def render_device(device: DeviceOverview, coverage: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]],
                  run_times: dict[str, tuple[datetime, datetime | None]], kernels: int) -> str:
    """A device's page: summary cards, coverage per op type, chart canvases (filled by dashboard.js), runs."""
    validations = device.validations
    accuracy = device.accuracy
    drift_runs = sum(1 for run in runs if run["drift_checks"])
    cards = join([
        _card("measurements", fmt_count(device.measurements), f"{kernels} distinct kernels"),
        _card("op types", len(device.op_types)),
        _card("regressor accuracy", fmt_pct(accuracy.get("within_10pct")),
              f"within ±10% held out, MAPE {fmt_pct(accuracy.get('mape'))}"),
        _card("validated predictions", fmt_pct(validations.get("within_band")),
              f"within ±10% of {validations.get('count', 0)} end-to-end measurements"),
        _card("profiling runs", device.runs, f"{drift_runs} with drift" if drift_runs else "no drift seen"),
    ])
    chart_notes = {
        "macs": "Each point is one measured kernel (median over runs), log-log. Points far above their op type's "
                "trend are kernels the runtime handles badly.",
        "bits": "Median speedup over fp32 of the same shape (dense kernels); runtime variants such as "
                "QLinearConv and NchwcConv count as Conv. Bars are missing where no shape was measured both ways.",
        "sparsity": "Median speedup over the dense kernel of the same shape and bit-width. A flat line at 1 means "
                    "sparsity gives nothing on this device.",
        "validation": "End-to-end validation runs (latpred validate): predicted against measured latency; the "
                      "shaded band is ±10%.",
    }
    charts = join(
        Safe(f'<section class="chart-box"><h3>{esc(title)}</h3><div class="chart-wrap">'
             f'<canvas id="chart-{name}" aria-label="{esc(title)}"></canvas></div>'
             f'<p class="note" id="chart-{name}-note">{esc(chart_notes[name])}</p></section>')
        for name, title in (("macs", "Latency vs MACs per op type"), ("bits", "Speedup by bit-width (vs fp32)"),
                            ("sparsity", "Speedup by weight sparsity (vs dense)"),
                            ("validation", "Predicted vs measured (validation runs)"))
    )
    body = Safe(
        f"<h1>{esc(device.name)}</h1>"
        f'<p class="lead">{esc(device.backend)} {esc(device.runtime_version)} · {esc(device.execution_provider)} · '
        f"threads: {esc(_threads(device.threads))} · host: {esc(device.host or 'unknown')} · "
        f"registered {esc(fmt_time(device.created_at))}</p>"
        f'<div class="cards">{cards}</div>'
        "<h2>Coverage per op type</h2>" + _coverage_table(coverage)
        + f'<h2>Latency charts</h2><p class="status" id="charts-status">loading chart data…</p>'
        f'<div class="charts">{charts}</div>'
        "<h2>Profiling runs and drift</h2>" + _runs_table(runs, run_times)
    )
    return layout(device.name, body, page="device", data={"device": device.name}, charts=True)


def _preset_checkboxes() -> Safe:
    boxes = []
    for index, (name, config) in enumerate(CANDIDATE_PRESETS):
        checked = " checked" if name in _DEFAULT_PRESETS else ""
        boxes.append(f'<label class="preset"><input type="checkbox" name="candidate" id="preset-{index}"'
                     f' value="{esc(name)}" data-config="{esc(json.dumps(config))}"{checked}> {esc(name)}</label>')
    return Safe("".join(boxes))


def render_models(models: Sequence[ModelOption], devices: Sequence[str], selected_model: str | None) -> str:
    """The model page: upload or pick a model, pick a device and candidate configs, rank, see the kernels."""
    model_options = join(
        Safe(f'<option value="{esc(model.id)}"{" selected" if model.id == selected_model else ""}>'
             f"{esc(model.name)} · {esc(fmt_count(model.kernels))} kernels · {esc(model.id[:12])}</option>")
        for model in models
    )
    device_options = join(Safe(f'<option value="{esc(name)}">{esc(name)}</option>') for name in devices)
    body = Safe(
        "<h1>Models</h1>"
        '<p class="lead">Rank compression configs of a model by predicted latency on a device, and see which '
        "kernels dominate and where each number comes from (measured table hit, regressor, or fallback).</p>"
        '<div class="panels">'
        '<section class="panel"><h2>1. Model</h2>'
        '<form id="upload-form"><label>ONNX file <input type="file" id="model-file" accept=".onnx"></label>'
        '<label>input shapes <input type="text" id="input-shapes" placeholder="input=1x3x224x224 (symbolic dims only)">'
        "</label>"
        '<label>API token <input type="password" id="api-token" autocomplete="off" '
        'placeholder="needed to upload (LATPRED_API_TOKENS)"></label>'
        '<button type="submit" id="upload-button">Upload</button></form>'
        '<p class="status" id="upload-status"></p>'
        f'<label>uploaded model <select id="model-select"><option value="">– pick a model –</option>{model_options}'
        "</select></label>"
        '<button type="button" id="list-models-button" class="small">list uploaded models (needs the token)</button>'
        "</section>"
        '<section class="panel"><h2>2. Device</h2>'
        f'<label>device <select id="device-select">{device_options}</select></label>'
        + ("" if devices else '<p class="warn">no devices yet: profile one first</p>')
        + "</section>"
        '<section class="panel"><h2>3. Candidate configs</h2>'
        f'<div class="presets">{_preset_checkboxes()}</div>'
        '<label>more candidates (JSON list of {"name", "config"}) <textarea id="custom-candidates" rows="3" '
        'placeholder=\'[{"name": "int8 head fp32", "config": {"default": {"bits": 8}, '
        '"layers": {"classifier": {"bits": 32}}}}]\'></textarea></label>'
        '<label>target speedup <input type="number" id="target-speedup" min="0" step="0.1" placeholder="e.g. 2">'
        "</label>"
        '<button type="button" id="rank-button">Rank</button></section>'
        "</div>"
        '<p class="status" id="rank-status"></p>'
        '<section id="results" hidden><h2>Ranked candidates</h2>'
        '<p id="baseline"></p>'
        '<table id="ranked"><thead><tr><th>#</th><th>candidate</th><th>predicted</th><th>interval</th>'
        "<th>speedup</th><th>meets target</th><th>table hits</th><th>kernel sources</th><th></th></tr></thead>"
        "<tbody></tbody></table>"
        '<h2>Per-kernel breakdown: <span id="breakdown-name"></span></h2>'
        '<p class="note">Kernels by predicted latency, largest first. Colour says where each number comes from: '
        '<span class="src table">table hit</span> measured on this device, <span class="src regressor">regressor'
        '</span> learned from similar kernels, <span class="src fallback">fallback</span> a bandwidth guess for op '
        "types never profiled here.</p>"
        '<p class="status" id="breakdown-status"></p>'
        '<div class="chart-wrap tall"><canvas id="chart-kernels" aria-label="per-kernel latency"></canvas></div>'
        '<details><summary>all kernels</summary><table id="kernels"><thead><tr><th>kernel</th><th>op type</th>'
        "<th>predicted</th><th>source</th><th>nodes</th></tr></thead><tbody></tbody></table></details>"
        "</section>"
    )
    return layout("Models", body, page="models", charts=True)


def render_error(title: str, message: str) -> str:
    """An error page (unknown device, reads need a token) in the dashboard's frame."""
    body = Safe(f"<h1>{esc(title)}</h1><p class=\"lead\">{esc(message)}</p><p>{link('/', 'All devices')}</p>")
    return layout(title, body, page="error")
