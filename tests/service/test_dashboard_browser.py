"""The dashboard in a real browser: headless Chromium (Selenium) against a real server on a really profiled store.

The store is filled the way users fill it: `latpred profile --for-model`, `train` and `validate` as
subprocesses on this machine. Screenshots land in the test's tmp dir and, if LATPRED_TEST_SCREENSHOTS_DIR
is set, are copied there too. Skips (with the install command) where Chromium or its driver is missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import pytest

from service.server import server_process
from tests import factories
from tests.service.conftest import TOKEN

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE = "cpu-test"
CANDIDATES = [
    {"name": "fp16", "config": {"default": {"bits": 16}}},
    {"name": "int8", "config": {"default": {"bits": 8}}},
    {"name": "sparse90", "config": {"default": {"sparsity": 0.9}}},
    {"name": "prune30", "config": {"default": {"prune_ratio": 0.3}}},
]
CHART_IDS = ("chart-macs", "chart-bits", "chart-sparsity", "chart-validation")
_PAGE_TIMEOUT_S = 120.0
_CLI_TIMEOUT_S = 600.0
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--window-size=1400,1000")
INSTALL_HINT = "apt-get install chromium chromium-driver"


def chromium_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip(f"Chromium not installed: {INSTALL_HINT}")
    return chromium, driver


@dataclass(frozen=True)
class LiveDashboard:
    url: str
    model_path: Path
    shots_dir: Path


def _latpred(env: dict[str, str], *args: str) -> str:
    """Run the CLI as users do; fail with its output if it fails."""
    done = subprocess.run([sys.executable, "-m", "service.cli", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=_CLI_TIMEOUT_S)
    assert done.returncode == 0, f"latpred {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDashboard]:
    """A server on a store with a real (short) profiling run, trained regressors and validations."""
    chromium_paths()
    root = tmp_path_factory.mktemp("dashboard")
    model_path = root / "residual_block.onnx"
    onnx.save(factories.residual_model(), model_path)
    configs = root / "candidates.json"
    configs.write_text(json.dumps(CANDIDATES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LATPRED_")}
    env.update(LATPRED_HOME=str(root / "home"), LATPRED_DATABASE_URL=f"sqlite:///{root / 'home' / 'latpred.db'}",
               LATPRED_API_TOKENS=TOKEN)
    (root / "home").mkdir()
    _latpred(env, "profile", "--device", DEVICE, "--for-model", str(model_path), "--configs", str(configs),
             "--budget-minutes", "1")
    _latpred(env, "train", "--device", DEVICE)
    _latpred(env, "validate", str(model_path), "--device", DEVICE, "--configs", str(configs))

    with server_process(env, log_path=root / "server.log") as server:
        shots = root / "screenshots"
        shots.mkdir()
        yield LiveDashboard(url=server.url, model_path=model_path, shots_dir=shots)
    keep = os.environ.get("LATPRED_TEST_SCREENSHOTS_DIR")
    if keep:
        shutil.copytree(root / "screenshots", keep, dirs_exist_ok=True)


@pytest.fixture
def browser(live: LiveDashboard, tmp_path: Path) -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    chromium, driver_path = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(_PAGE_TIMEOUT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, _PAGE_TIMEOUT_S, poll_frequency=0.2).until(condition)
    except TimeoutException as exc:
        raise AssertionError(f"timed out waiting for {what}; page says: {driver.find_element('tag name', 'main').text}"
                             ) from exc


def body_flag(name: str) -> Any:
    return lambda driver: driver.execute_script(f"return document.body.dataset.{name} === 'true';")


def screenshot(driver: Any, live: LiveDashboard, name: str) -> Path:
    """The whole page: the window is made as tall as the document first."""
    height = driver.execute_script("return document.documentElement.scrollHeight;")
    driver.set_window_size(1400, max(1000, int(height) + 40))
    path = live.shots_dir / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"screenshot {name} failed"
    driver.set_window_size(1400, 1000)
    assert path.stat().st_size > 10_000, "a real screenshot, not an empty image"
    return path


def console_errors(driver: Any) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


_CHART_POINTS = """
const chart = Chart.getChart(document.getElementById(arguments[0]));
if (!chart) return null;
return chart.data.datasets.map(d => ({label: d.label, points: d.data.filter(v => v !== null).length}));
"""


def test_devices_then_device_page_draws_the_charts(browser: Any, live: LiveDashboard) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{live.url}/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
    assert len(rows) == 1
    cells = [cell.text for cell in rows[0].find_elements(By.TAG_NAME, "td")]
    assert cells[0] == DEVICE and cells[1].startswith("onnxruntime")
    assert int(cells[4]) > 0, "measurements"
    assert int(cells[5].split()[0]) > 0, "op types"
    assert "finished" in cells[6]
    screenshot(browser, live, "01-devices")

    browser.find_element(By.LINK_TEXT, DEVICE).click()
    wait_for(browser, body_flag("chartsReady"), "the device's chart data")
    assert browser.current_url.endswith(f"/devices/{DEVICE}")
    assert browser.find_element(By.TAG_NAME, "h1").text == DEVICE
    assert "Could not load" not in browser.find_element(By.ID, "charts-status").text
    coverage = browser.find_elements(By.CSS_SELECTOR, "#coverage tbody tr")
    assert len(coverage) >= 2 and any("Conv" in row.text for row in coverage)
    for chart_id in CHART_IDS:
        datasets = browser.execute_script(_CHART_POINTS, chart_id)
        assert datasets is not None, f"{chart_id} was not drawn"
        assert sum(d["points"] for d in datasets) > 0, f"{chart_id} has no points: {datasets}"
    validation = browser.execute_script(_CHART_POINTS, "chart-validation")
    assert validation[-1] == {"label": "validations", "points": len(CANDIDATES) + 1}
    bits = browser.execute_script(_CHART_POINTS, "chart-bits")
    assert {"fp32", "int8"} <= {d["label"] for d in bits}
    assert browser.find_element(By.CSS_SELECTOR, "#runs tbody tr").text.split()[1] == "finished"
    screenshot(browser, live, "02-device")
    assert console_errors(browser) == []


def test_model_page_uploads_ranks_and_breaks_down_kernels(browser: Any, live: LiveDashboard) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{live.url}/models")
    browser.find_element(By.ID, "api-token").send_keys(TOKEN)
    browser.find_element(By.ID, "model-file").send_keys(str(live.model_path))
    browser.find_element(By.ID, "upload-button").click()
    wait_for(browser, body_flag("uploadReady"), "the upload")
    assert browser.find_element(By.ID, "upload-status").text.startswith("Uploaded residual_block.onnx")
    assert Select(browser.find_element(By.ID, "model-select")).first_selected_option.text.startswith(
        "residual_block.onnx")
    Select(browser.find_element(By.ID, "device-select")).select_by_visible_text(DEVICE)
    for box in browser.find_elements(By.CSS_SELECTOR, 'input[name="candidate"]'):
        if box.is_selected() != (box.get_attribute("value") in {"fp16", "int8", "sparse90", "prune30"}):
            box.click()
    browser.find_element(By.ID, "target-speedup").send_keys("1.2")
    browser.find_element(By.ID, "rank-button").click()
    wait_for(browser, body_flag("rankReady"), "the ranking")
    wait_for(browser, body_flag("breakdownReady"), "the kernel breakdown")
    assert browser.find_element(By.ID, "rank-status").text.startswith("Ranked 4 candidates"), \
        browser.find_element(By.ID, "rank-status").text

    rows = browser.find_elements(By.CSS_SELECTOR, "#ranked tbody tr")
    names = [row.get_attribute("data-candidate") for row in rows]
    assert sorted(names) == ["fp16", "int8", "prune30", "sparse90"]
    latencies = [float(row.find_elements(By.TAG_NAME, "td")[2].text.removesuffix(" ms")) for row in rows]
    assert latencies == sorted(latencies) and latencies[0] > 0, "fastest first"
    assert all(row.find_elements(By.TAG_NAME, "td")[5].text in {"yes", "no"} for row in rows)

    assert browser.find_element(By.ID, "breakdown-name").text == names[0]
    kernels = browser.execute_script(_CHART_POINTS, "chart-kernels")
    assert [d["label"] for d in kernels] == ["table hit", "regressor", "fallback"]
    bars = sum(d["points"] for d in kernels)
    table_rows = browser.find_elements(By.CSS_SELECTOR, "#kernels tbody tr")
    assert bars == min(25, len(table_rows)) and bars > 0
    assert kernels[0]["points"] > 0, "the model was profiled: some kernels are table hits"
    sources = {row.find_elements(By.TAG_NAME, "td")[3].get_attribute("textContent") for row in table_rows}
    assert sources <= {"table", "regressor", "fallback"}
    screenshot(browser, live, "03-models")

    # Another candidate's breakdown on demand.
    rows[-1].find_element(By.TAG_NAME, "button").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "breakdown-name").text == names[-1], "the second breakdown")
    wait_for(browser, body_flag("breakdownReady"), "the second breakdown")
    assert "Breakdown failed" not in browser.find_element(By.ID, "breakdown-status").text
    assert console_errors(browser) == []
