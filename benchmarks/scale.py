"""Scale (issue 23): a device table of millions of rows on PostgreSQL, agents uploading while users predict.

    .venv/bin/python -m benchmarks.scale --rows 1000000 10000000 --out benchmarks/results/scale.json

One device (this host's onnxruntime, 1 thread) is grown to each size in turn, on a PostgreSQL database of its own
(--database-url; created if missing, reused with the rows it has unless --fresh):

- fill: synthetic kernel keys (fp32, int8 and 50%-sparse convs of the same shapes, Gemms, Adds; every tenth key
  measured again in a second run) written through the store (`add_measurements`, batches of 5,000 rows, one
  transaction each, one writer), with the kernels of MobileNetV2 (a real export's skeleton, data/priors)
  among them; the insert rate is the fill's;
- load: `DevicePredictor.load` in this process (seconds);
- a real `latpred serve` (its job worker beside it, two prediction workers; --api-processes N for --workers N)
  started on the store, then through its API: the first predict of MobileNetV2 after start (the predictor's load,
  the model's preparation, a prediction worker's start), warm predicts (p50, p99 of 200), four users asking at once
  (25 each: both prediction workers then hold the device's predictor, as in use), predicts while two agents
  upload batches of 1,000 rows through the API (every latency, the agents' insert rate), one row uploaded then the
  model asked again (its time, and whether the answer includes the row), the dashboard's device page in headless
  Chromium until its charts are drawn (and, for the parts, over HTTP: the HTML, its static files, the chart data),
  and the server's memory, sampled every 0.5 s over all its processes by role (api, job worker, forkserver,
  prediction workers, optimizer sandboxes): PSS, so pages shared by forked workers count once, and RSS;
- targets: each figure the issue sets a target for, at this size, and whether it was met (`judge`).

Progress goes to stderr line by line; results to --out after each size (the host, its CPU affinity, the commit).
Waits while an accuracy benchmark or a profiling run is going on, unless --no-wait.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from sqlalchemy import create_engine, func, make_url, select, text
from sqlalchemy.pool import NullPool

from predictor.estimation.estimate import DevicePredictor
from predictor.kernels.keys import KernelKey
from predictor.runtime.optimizer import describe_host, local_runtime
from predictor.store import (
    MeasurementIn,
    MeasurementTally,
    add_measurements,
    create_store_engine,
    get_device,
    register_device,
    session_factory,
    session_scope,
    start_run,
    upgrade_schema,
)
from profiler.plan import DEFAULT_PRIORS_DIR
from profiler.skeleton import load_skeleton, materialize_skeleton
from service.server import server_process

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/latpred_scale"
TOKEN = "scale-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEVICE = "scale-cpu-1t"
MODEL = "mobilenet_v2"
FILL_BATCH_ROWS = 5000
AGENT_BATCH_ROWS = 1000
CONCURRENT_CLIENTS = 4
CONCURRENT_PREDICTS_EACH = 25
# Every tenth filler key is measured again in a second run (the median of run medians is kept per key).
REMEASURE_EVERY = 10
_KINDS = 5


# ---------------------------------------------------------------------------------------------- synthetic keys
def filler_key(index: int) -> KernelKey:
    """The index-th synthetic kernel key: distinct for every index below 10^9."""
    kind, rest = index % _KINDS, index // _KINDS
    channels = 8 + rest % 2048
    size = 1 + (rest // 2048) % 128
    batch = 1 + rest // (2048 * 128)
    activation = [batch, channels, size, size]
    conv = {"inputs": [activation], "outputs": [activation], "weight": [channels, channels, 3, 3],
            "attrs": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [1, 1], "group": 1}}
    if kind == 0:
        data: dict[str, Any] = {"op_type": "FusedConv", "activation": "Relu", **conv}
    elif kind == 1:
        data = {"op_type": "QLinearConv", "dtype": "uint8", "bits": 8, **conv}
    elif kind == 2:
        data = {"op_type": "FusedConv", "activation": "Relu", "sparsity": 0.5, "sparsity_pattern": "unstructured",
                **conv}
    elif kind == 3:
        data = {"op_type": "Gemm", "inputs": [[batch, channels * 4 + size]], "outputs": [[batch, channels]],
                "weight": [channels, channels * 4 + size], "attrs": {"transB": 1}}
    else:
        data = {"op_type": "Add", "inputs": [activation, activation], "outputs": [activation]}
    return KernelKey.from_dict(data)


def synthetic_median_ms(index: int, key: KernelKey, run: int) -> float:
    """A plausible latency: MACs at 4 GMAC/s (int8 twice as fast), a little noise per index and run."""
    outputs = key.outputs[0] or (1,)
    out_elems = int(np.prod(outputs))
    # MACs per output element: the weight's elements per output channel (1 for ops without weights).
    per_output = max(int(np.prod(key.weight)) // outputs[1], 1) if key.weight and len(outputs) > 1 else 1
    speed = 2.0 if key.bits == 8 else 1.0
    noise = 1.0 + 0.05 * ((index * 7919 + run * 104729) % 97) / 97
    return (0.002 + out_elems * per_output / 4e9 / speed) * noise


def measurement(key: KernelKey, median_ms: float) -> MeasurementIn:
    return MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                         median_ms=median_ms, p10_ms=median_ms * 0.95, p90_ms=median_ms * 1.05, repeats=30)


def api_row(key: KernelKey, median_ms: float) -> dict[str, Any]:
    return {"key": key.to_dict(), "median_ms": median_ms, "p10_ms": median_ms * 0.95, "p90_ms": median_ms * 1.05,
            "repeats": 30}


# ---------------------------------------------------------------------------------------------- the store
def ensure_database(url: str, fresh: bool) -> None:
    """Create the benchmark's database (dropped first with `fresh`)."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as connection:
            if fresh:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
            exists = connection.execute(text("SELECT 1 FROM pg_database WHERE datname = :name"),
                                        {"name": parsed.database}).first()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()


def stored_rows(url: str) -> int:
    engine = create_store_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(select(func.coalesce(func.sum(MeasurementTally.measurements), 0)))
                       .scalar_one())
    finally:
        engine.dispose()


def register(url: str) -> None:
    engine = create_store_engine(url)
    upgrade_schema(engine)
    runtime = local_runtime(1)
    with session_scope(session_factory(engine)) as session:
        register_device(session, name=DEVICE, backend=runtime.backend, execution_provider=runtime.execution_provider,
                        runtime_version=runtime.runtime_version, threads=runtime.threads, host=describe_host())
    engine.dispose()


def fill(url: str, target_rows: int, model_kernels: list[KernelKey]) -> dict[str, Any]:
    """Grow the device's table to `target_rows` rows through the store; the insert rate of this fill."""
    engine = create_store_engine(url)
    factory = session_factory(engine)
    have = stored_rows(url)
    if have >= target_rows:
        engine.dispose()
        if have > target_rows + 2 * FILL_BATCH_ROWS:
            # Tables only grow here: a smaller size needs a database of its own (--fresh, or --database-url).
            progress(f"  the database holds {have:,} rows, more than {target_rows:,}: measuring at {have:,}")
        return {"rows_added": 0, "note": f"reused the {have} rows stored before"}
    # Rows per filler key: one, plus one more for every REMEASURE_EVERY-th.
    per_key = 1 + 1 / REMEASURE_EVERY
    first_key = int(round((have - len(model_kernels) if have else 0) / per_key))
    added = 0
    started = time.perf_counter()
    with session_scope(factory) as session:
        device = get_device(session, DEVICE)
        start_run(session, device, "fill-1")
        start_run(session, device, "fill-2")
        if not have:
            added += add_measurements(session, device, "fill-1", [
                measurement(key, synthetic_median_ms(index, key, 1)) for index, key in enumerate(model_kernels)])
    index = first_key
    last_report = started
    while have + added < target_rows:
        batch_first, again = [], []
        for _ in range(FILL_BATCH_ROWS):
            key = filler_key(index)
            batch_first.append(measurement(key, synthetic_median_ms(index, key, 1)))
            if index % REMEASURE_EVERY == 0:
                again.append(measurement(key, synthetic_median_ms(index, key, 2)))
            index += 1
        with session_scope(factory) as session:
            device = get_device(session, DEVICE)
            added += add_measurements(session, device, "fill-1", batch_first)
            added += add_measurements(session, device, "fill-2", again)
        if time.perf_counter() - last_report > 60:
            last_report = time.perf_counter()
            rate = added / (last_report - started)
            progress(f"  {have + added:,} rows ({rate:,.0f} rows/s)")
    elapsed = time.perf_counter() - started
    engine.dispose()
    return {"rows_added": added, "seconds": round(elapsed, 1), "rows_per_s": round(added / elapsed, 1),
            "batch_rows": FILL_BATCH_ROWS, "writers": 1}


def load_in_process(url: str) -> dict[str, Any]:
    """DevicePredictor.load here: seconds and the RSS it adds (its table held)."""
    engine = create_store_engine(url)
    before = rss_kb(os.getpid())
    started = time.perf_counter()
    with session_scope(session_factory(engine)) as session:
        predictor = DevicePredictor.load(session, get_device(session, DEVICE))
    elapsed = time.perf_counter() - started
    after = rss_kb(os.getpid())
    engine.dispose()
    return {"seconds": round(elapsed, 2), "table_entries": predictor.measurement_count,
            "rss_added_mb": round((after - before) / 1024, 1)}


def database_size_mb(url: str) -> float:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return round(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one() / 2**20,
                         1)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- the server
def _proc_kb(path: str, field: str) -> int:
    """A "Field: N kB" line of a /proc file; 0 where the process is gone."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kb(pid: int) -> int:
    return _proc_kb(f"/proc/{pid}/status", "VmRSS:")


def pss_kb(pid: int) -> int:
    """Proportional set size: the process's own pages plus its share of pages shared with others (forked
    workers share their parent's), so a sum over processes counts every page once."""
    return _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")


def _process_table() -> dict[int, tuple[int, str]]:
    """Every process: its parent and command line."""
    table: dict[int, tuple[int, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        table[int(stat.parent.name)] = (parent, command)
    return table


def server_processes(pid: int, api_processes: int) -> dict[int, str]:
    """The server's processes (`pid` and its descendants) by role.

    api: the process running the app (with `api_processes` > 1, the processes uvicorn spawns, and `pid` is their
    supervisor); job worker: `latpred worker`; forkserver: where prediction workers are forked from; prediction
    worker: each holds its own predictor of the device; optimizer sandbox: predictor.runtime.optimizer's spawned
    onnxruntime processes (of an api process or a prediction worker); other: multiprocessing's resource tracker.
    """
    table = _process_table()
    roles = {pid: "api" if api_processes == 1 else "supervisor"}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (of, command) in table.items():
            if of != parent or child in roles:
                continue
            if roles[parent] == "forkserver":
                role = "prediction worker"
            elif "service.cli worker" in command:
                role = "job worker"
            elif "forkserver" in command:
                role = "forkserver"
            elif "spawn_main" in command:
                role = "api" if roles[parent] == "supervisor" else "optimizer sandbox"
            else:
                role = "other"
            roles[child] = role
            frontier.append(child)
    return roles


class RssSampler:
    """The resident memory of the server's processes by role (RSS and PSS), sampled every half second in a thread."""

    def __init__(self, pid: int, api_processes: int) -> None:
        self.pid = pid
        self.api_processes = api_processes
        self.peak_rss_total_kb = 0
        self.peak_pss_total_kb = 0
        # Per role: the largest single process seen (RSS), and the largest sum over the role's processes (PSS).
        self.peak_rss_single_kb: dict[str, int] = {}
        self.peak_pss_sum_kb: dict[str, int] = {}
        self.peak_processes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        """RSS and PSS summed over the server's processes now (kB)."""
        rss_total = pss_total = 0
        pss_sums: dict[str, int] = {}
        counts: dict[str, int] = {}
        for pid, role in server_processes(self.pid, self.api_processes).items():
            rss, pss = rss_kb(pid), pss_kb(pid)
            rss_total += rss
            pss_total += pss
            pss_sums[role] = pss_sums.get(role, 0) + pss
            counts[role] = counts.get(role, 0) + 1
            with self._lock:
                self.peak_rss_single_kb[role] = max(self.peak_rss_single_kb.get(role, 0), rss)
        with self._lock:
            for role, kb in pss_sums.items():
                self.peak_pss_sum_kb[role] = max(self.peak_pss_sum_kb.get(role, 0), kb)
            for role, count in counts.items():
                self.peak_processes[role] = max(self.peak_processes.get(role, 0), count)
            self.peak_rss_total_kb = max(self.peak_rss_total_kb, rss_total)
            self.peak_pss_total_kb = max(self.peak_pss_total_kb, pss_total)
        return rss_total, pss_total

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                "peak_pss_all_processes_mb": mb(self.peak_pss_total_kb),
                "peak_rss_all_processes_mb": mb(self.peak_rss_total_kb),
                "peak_pss_sum_by_role_mb": {role: mb(kb) for role, kb in sorted(self.peak_pss_sum_kb.items())},
                "peak_rss_largest_process_by_role_mb": {role: mb(kb)
                                                        for role, kb in sorted(self.peak_rss_single_kb.items())},
                "most_processes_by_role": dict(sorted(self.peak_processes.items())),
            }

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def mb(kb: int) -> float:
    return round(kb / 1024, 1)


def percentiles(latencies_ms: list[float]) -> dict[str, float]:
    return {"count": len(latencies_ms), "p50_ms": round(float(np.percentile(latencies_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(latencies_ms, 99)), 2),
            "max_ms": round(max(latencies_ms), 2)}


def timed_predict(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    response = client.post("/api/predict", json=body)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed, response.json()


def concurrent_predicts(base: str, body: dict[str, Any], clients: int, predicts_each: int) -> dict[str, float]:
    """`clients` users asking the same question `predicts_each` times each, all at once: every latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def user() -> None:
        with httpx.Client(base_url=base, headers=AUTH, timeout=600) as client:
            for _ in range(predicts_each):
                elapsed, _ = timed_predict(client, body)
                with lock:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=user) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return percentiles(latencies) | {"clients": clients}


def agents_uploading(url: str, stop: threading.Event, first_key: int, agents: int, uploaded: list[int],
                     errors: list[str]) -> list[threading.Thread]:
    """Agent threads posting batches of new keys (and some measured again) until `stop` is set."""

    def agent(number: int) -> None:
        run_id = f"agent-{number}-{uuid.uuid4().hex[:8]}"
        index = first_key + number * 10**8
        with httpx.Client(base_url=url, headers=AUTH, timeout=300) as client:
            client.post(f"/api/devices/{DEVICE}/runs", json={"run_id": run_id}).raise_for_status()
            while not stop.is_set():
                rows = []
                for _ in range(AGENT_BATCH_ROWS):
                    key = filler_key(index)
                    rows.append(api_row(key, synthetic_median_ms(index, key, 3)))
                    index += 1
                response = client.post(f"/api/devices/{DEVICE}/measurements",
                                       json={"run_id": run_id, "measurements": rows})
                if response.status_code != 200:
                    errors.append(f"{response.status_code}: {response.text[:200]}")
                    continue
                uploaded.append(int(response.json()["inserted"]))

    threads = [threading.Thread(target=agent, args=(number,), daemon=True) for number in range(agents)]
    for thread in threads:
        thread.start()
    return threads


@contextmanager
def serving(url: str, home: Path, api_processes: int) -> Iterator[tuple[str, int]]:
    """`latpred serve` as deployed: its job worker beside it, two prediction workers per api process."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATPRED_")}
    env.update(LATPRED_DATABASE_URL=url, LATPRED_HOME=str(home), LATPRED_API_TOKENS=TOKEN,
               LATPRED_PREDICT_WORKERS="2", LATPRED_PREDICT_TIMEOUT_S="600")
    with server_process(env, log_path=home / "server.log", start_timeout_s=120, stop_timeout_s=60,
                        workers=api_processes, job_worker=True) as server:
        yield server.url, server.process.pid


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Runs in the page before its own scripts: notes when the page's script marks its charts drawn, in ms since the
# navigation started (performance.now's origin), so the time is the page's own, without WebDriver's polling.
_CHARTS_READY_PROBE = """
new MutationObserver(function (changes, observer) {
  if (document.body && document.body.dataset.chartsReady === 'true') {
    window.__latpredChartsReadyMs = performance.now();
    observer.disconnect();
  }
}).observe(document, {attributes: true, subtree: true, attributeFilter: ['data-charts-ready']});
"""

# Where a load's time went (s since the navigation started): the HTML received, the document and its scripts
# loaded, the chart data received, the charts drawn.
_PAGE_PHASES = """
const navigation = performance.getEntriesByType('navigation')[0];
const charts = performance.getEntriesByType('resource').filter(e => e.name.includes('/dashboard/devices/'));
const s = ms => Math.round(ms) / 1000;
return {html_received: s(navigation.responseEnd), loaded: s(navigation.loadEventEnd),
        chart_data_requested: charts.length ? s(charts[0].startTime) : null,
        chart_data_received: charts.length ? s(charts[0].responseEnd) : null,
        charts_drawn: s(window.__latpredChartsReadyMs)};
"""


def render_device_page(base: str, profile_dir: Path, loads: int = 3) -> dict[str, Any]:
    """The device page in headless Chromium (Selenium), from navigation until its charts are drawn.

    The browser is started and has opened a blank page first (a user's browser is running). Each load is timed
    by the page itself from the navigation's start until its script has fetched the chart data and drawn every
    chart (it sets body[data-charts-ready]; Chart.js may still animate); the first load starts with an empty
    cache. Skipped, saying why, where Chromium, its driver or Selenium is missing.
    """
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    try:
        from selenium import webdriver
    except ImportError:
        return {"skipped": "selenium missing (pip install -e '.[dev]')"}
    if chromium is None or driver_path is None:
        return {"skipped": "Chromium or chromedriver missing (apt-get install chromium chromium-driver)"}
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={profile_dir}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(600)
    page_s: list[float] = []
    wall_s: list[float] = []
    phases: list[dict[str, float]] = []
    statuses: list[str] = []
    try:
        driver.get("about:blank")
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _CHARTS_READY_PROBE})
        for _ in range(loads):
            started = time.perf_counter()
            driver.get(f"{base}/devices/{DEVICE}")
            while (ready_ms := driver.execute_script("return window.__latpredChartsReadyMs;")) is None:
                if time.perf_counter() - started > 600:
                    raise TimeoutError("the device page's charts were not drawn within 600 s")
                time.sleep(0.01)
            wall_s.append(time.perf_counter() - started)
            page_s.append(float(ready_ms) / 1000)
            phases.append(driver.execute_script(_PAGE_PHASES))
            statuses.append(driver.execute_script(
                "const e = document.getElementById('charts-status'); return e.className + ': ' + e.textContent;"))
    finally:
        driver.quit()
    return {"loads": len(page_s), "first_s": round(page_s[0], 2), "median_s": round(statistics.median(page_s), 2),
            "max_s": round(max(page_s), 2), "wall_max_s": round(max(wall_s), 2),
            "slowest_load_phases_s": phases[page_s.index(max(page_s))], "charts_status": statuses[-1],
            "charts_failed": any(status.split(":", 1)[0].split()[-1] == "bad" for status in statuses)}


def fetch_device_page(base: str, loads: int = 3) -> dict[str, Any]:
    """What the browser fetches for the device page, one after another over HTTP: the HTML, its stylesheet and
    scripts, then the chart data the page's script asks for (the drawing is not in these times)."""
    static = ["/static/dashboard.css", "/static/vendor/chart.umd.js", "/static/dashboard.js"]
    timings = []
    with httpx.Client(base_url=base, timeout=600) as client:
        for _ in range(loads):
            started = time.perf_counter()
            client.get(f"/devices/{DEVICE}").raise_for_status()
            html_s = time.perf_counter() - started
            for path in static:
                client.get(path).raise_for_status()
            charts_started = time.perf_counter()
            charts = client.get(f"/api/dashboard/devices/{DEVICE}/charts")
            charts.raise_for_status()
            ended = time.perf_counter()
            timings.append((ended - started, html_s, ended - charts_started, charts.json()["sample_share"]))
        started = time.perf_counter()
        client.get("/").raise_for_status()
        devices_page_s = time.perf_counter() - started
    return {"total_first_s": round(timings[0][0], 2),
            "total_median_s": round(statistics.median(t[0] for t in timings), 2),
            "html_median_s": round(statistics.median(t[1] for t in timings), 2),
            "chart_data_median_s": round(statistics.median(t[2] for t in timings), 2),
            "chart_sample_share": round(timings[0][3], 4), "devices_page_s": round(devices_page_s, 2)}


def measure_server(url: str, home: Path, model_bytes: bytes, model_kernels: list[KernelKey],
                   upload_seconds: float, agents: int, api_processes: int, agent_first_key: int) -> dict[str, Any]:
    result: dict[str, Any] = {"api_processes": api_processes, "predict_workers_per_api_process": 2}
    started = time.perf_counter()
    with serving(url, home, api_processes) as (base, pid), RssSampler(pid, api_processes) as memory, \
            httpx.Client(base_url=base, headers=AUTH, timeout=600) as client:
        result["server_start_s"] = round(time.perf_counter() - started, 2)
        result["memory_idle_pss_mb"] = mb(memory.sample()[1])
        upload = client.post("/api/models", files={"file": (f"{MODEL}.onnx", model_bytes)})
        upload.raise_for_status()
        body = {"device": DEVICE, "model_id": upload.json()["id"]}
        first_ms, first = timed_predict(client, body)
        result["first_predict_s"] = round(first_ms / 1000, 2)
        result["first_predict_table_hit_rate"] = first["table_hit_rate"]
        progress(f"  server up in {result['server_start_s']} s; first predict {result['first_predict_s']} s "
                 f"(table hits {first['table_hit_rate']:.0%})")
        warm = [timed_predict(client, body)[0] for _ in range(200)]
        result["warm_predict"] = percentiles(warm)
        progress(f"  warm predict p50 {result['warm_predict']['p50_ms']} ms, p99 {result['warm_predict']['p99_ms']} ms")
        # Users asking at once: every prediction worker gets questions, and the first on a worker loads its own
        # predictor of the device (the server's memory then holds one per worker, as it does once in use).
        result["concurrent_predicts"] = concurrent_predicts(base, body, clients=CONCURRENT_CLIENTS,
                                                            predicts_each=CONCURRENT_PREDICTS_EACH)
        progress(f"  {CONCURRENT_CLIENTS} users at once: p50 {result['concurrent_predicts']['p50_ms']} ms, "
                 f"max {result['concurrent_predicts']['max_ms']} ms")

        # Agents upload through the API while a user predicts: every predict's latency.
        progress(f"  {agents} agents uploading for {upload_seconds:g} s while predicting")
        stop = threading.Event()
        uploaded: list[int] = []
        errors: list[str] = []
        threads = agents_uploading(base, stop, first_key=agent_first_key, agents=agents, uploaded=uploaded,
                                   errors=errors)
        during: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < upload_seconds:
            during.append(timed_predict(client, body)[0])
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        elapsed = time.perf_counter() - started
        # Then one of the model's kernels measured again (one row), and the model asked: the answer must include it.
        kernel = model_kernels[0]
        before = next(k["latency_ms"] for k in first["kernels"] if k["key_hash"] == kernel.key_hash)
        response = client.post(f"/api/devices/{DEVICE}/measurements", json={
            "run_id": f"check-{uuid.uuid4().hex[:8]}", "measurements": [api_row(kernel, before * 3)]})
        response.raise_for_status()
        after_ms, after = timed_predict(client, body)
        now = next(k["latency_ms"] for k in after["kernels"] if k["key_hash"] == kernel.key_hash)
        result["predict_while_uploading"] = percentiles(during) | {
            "agents": agents, "agent_batch_rows": AGENT_BATCH_ROWS, "seconds": round(elapsed, 1),
            "rows_uploaded": sum(uploaded), "api_insert_rows_per_s": round(sum(uploaded) / elapsed, 1),
            "upload_errors": len(errors), "first_upload_errors": errors[:3]}
        result["predict_after_1_row_upload"] = {"ms": round(after_ms, 2), "includes_the_row": now != before}
        progress(f"  while uploading: {len(during)} predicts, p50 {result['predict_while_uploading']['p50_ms']} ms, "
                 f"max {result['predict_while_uploading']['max_ms']} ms; agents stored {sum(uploaded):,} rows "
                 f"({result['predict_while_uploading']['api_insert_rows_per_s']:,.0f} rows/s), {len(errors)} errors")

        result["device_page_browser"] = render_device_page(base, home / "chromium-profile")
        result["device_page_http"] = fetch_device_page(base)
        progress(f"  device page in Chromium: {result['device_page_browser']}; over HTTP: "
                 f"{result['device_page_http']['total_median_s']} s")
        result["memory_end_pss_mb"] = mb(memory.sample()[1])
    result["memory"] = memory.summary()
    progress(f"  server memory: peak {result['memory']['peak_pss_all_processes_mb']} MB PSS over all processes, "
             f"by role {result['memory']['peak_pss_sum_by_role_mb']}")
    return result


# ---------------------------------------------------------------------------------------------- targets
# Issue 23's targets (on PostgreSQL, on a 2-core host): (figure, what it is, most allowed, unit). The first set at
# 1M rows (and for any smaller table), the second at 10M rows (and beyond).
TARGETS_1M = [
    ("first_predict_s", "first predict after start", 15.0, "s"),
    ("warm_predict_p50_ms", "warm predict p50", 10.0, "ms"),
    ("slowest_predict_while_uploading_ms", "slowest predict while agents upload", 2000.0, "ms"),
    ("device_page_rendered_s", "device page fully rendered (slowest of its loads)", 3.0, "s"),
    ("server_memory_mb", "server memory (peak PSS, all its processes)", 1024.0, "MiB"),
]
TARGETS_10M = [
    ("first_predict_s", "first predict after start", 60.0, "s"),
    ("warm_predict_p50_ms", "warm predict p50", 10.0, "ms"),
]


def judge(rows: int, server: dict[str, Any]) -> dict[str, Any]:
    """Each target that applies at this size: the figure, the most allowed, and whether it was met."""
    browser = server["device_page_browser"]
    page_s = browser["max_s"] if "max_s" in browser and not browser["charts_failed"] else None
    figures = {
        "first_predict_s": server["first_predict_s"],
        "warm_predict_p50_ms": server["warm_predict"]["p50_ms"],
        "slowest_predict_while_uploading_ms": server["predict_while_uploading"]["max_ms"],
        "device_page_rendered_s": page_s,
        "server_memory_mb": server["memory"]["peak_pss_all_processes_mb"],
    }
    verdicts = {}
    for name, what, most, unit in TARGETS_10M if rows >= 10_000_000 else TARGETS_1M:
        value = figures[name]
        verdicts[name] = {"what": what, "value": value, "target": f"<= {most:g} {unit}",
                          "met": None if value is None else bool(value <= most)}
    return verdicts


def model_kernel_keys(model: onnx.ModelProto) -> list[KernelKey]:
    """The model's kernels as the server's runtime (1 thread) builds them: what the device table must hold."""
    from predictor.kernels.keys import extract_kernels

    seen: dict[str, KernelKey] = {}
    for kernel in extract_kernels(model, local_runtime(1)):
        seen.setdefault(kernel.key.key_hash, kernel.key)
    return list(seen.values())


def wait_for_quiet_host(poll_s: float = 60.0) -> float:
    """Wait while a timing-sensitive job of this project runs (accuracy benchmark, profiling); seconds waited."""
    waited = 0.0
    # `latpred profile` also runs as `python -m service.cli profile` (the aarch64 agent test runs it so).
    busy = "benchmarks.accuracy|latpred profile|service.cli profile"
    while subprocess.run(["pgrep", "-f", busy], capture_output=True).returncode == 0:
        progress("  waiting: an accuracy benchmark or a profiling run is going on")
        time.sleep(poll_s)
        waited += poll_s
    return waited


def git_commit() -> str:
    """The commit this tree is at; "unknown" outside a checkout (a `git archive` copy: pass --commit)."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--fresh", action="store_true", help="drop the benchmark's database first")
    parser.add_argument("--upload-seconds", type=float, default=60.0)
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument("--api-processes", type=int, default=1, help="latpred serve --workers")
    parser.add_argument("--no-wait", action="store_true",
                        help="measure even while an accuracy benchmark or a profiling run is going on")
    parser.add_argument("--commit", help="the commit the code is at, recorded where this tree is no checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = parser.parse_args()

    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    ensure_database(args.database_url, args.fresh)
    register(args.database_url)
    model = materialize_skeleton(load_skeleton(DEFAULT_PRIORS_DIR / f"{MODEL}.json"))
    model_bytes = model.SerializeToString()
    kernels = model_kernel_keys(model)
    home = Path(tempfile.mkdtemp(prefix="latpred-scale-"))
    progress(f"server homes and logs under {home}")
    results: list[dict[str, Any]] = []
    for target in sorted(args.rows):
        progress(f"filling to {target:,} rows")
        entry: dict[str, Any] = {"rows_target": target, "fill": fill(args.database_url, target, kernels)}
        entry["rows"] = stored_rows(args.database_url)
        entry["database_mb"] = database_size_mb(args.database_url)
        entry["waited_for_quiet_host_s"] = 0.0 if args.no_wait else wait_for_quiet_host()
        progress(f"measuring at {entry['rows']:,} rows ({entry['database_mb']:,.0f} MB database)")
        # The host's load just before (1-minute average): anything else running shows here.
        entry["load_average_before"] = round(os.getloadavg()[0], 2)
        entry["load_in_process"] = load_in_process(args.database_url)
        progress(f"  DevicePredictor.load here: {entry['load_in_process']['seconds']} s")
        size_home = home / str(target)
        size_home.mkdir()
        entry["server"] = measure_server(args.database_url, size_home, model_bytes, kernels, args.upload_seconds,
                                         args.agents, args.api_processes, agent_first_key=5 * 10**8 + entry["rows"])
        entry["load_average_after"] = round(os.getloadavg()[0], 2)
        entry["model"] = {"name": MODEL, "kernels": len(kernels)}
        entry["targets"] = judge(entry["rows"], entry["server"])
        for name, verdict in entry["targets"].items():
            state = {True: "met", False: "MISSED", None: "not measured"}[verdict["met"]]
            progress(f"  target {name}: {verdict['value']} ({verdict['target']}): {state}")
        results.append(entry)
        document = {
            "command": ".venv/bin/python -m benchmarks.scale " + " ".join(sys.argv[1:]),
            "started_at": started_at,
            "git_commit": args.commit or git_commit(),
            "host": {"cpus": os.cpu_count(), "cpus_allowed": sorted(os.sched_getaffinity(0)),
                     "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                     "python": platform.python_version(), "machine": platform.machine(),
                     "postgresql": postgres_version(args.database_url)},
            "database": make_url(args.database_url).render_as_string(hide_password=True),
            "waited_for_quiet_host": not args.no_wait,
            "results": results,
        }
        # Written after each size: a long run's first figures survive its end.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=1) + "\n")
        progress(f"wrote {args.out}")
    return 0


def postgres_version(url: str) -> str:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar_one())
    finally:
        engine.dispose()


if __name__ == "__main__":
    sys.exit(main())
