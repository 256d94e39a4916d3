"""Dashboard pages and chart data over a store with known rows (SQLite and PostgreSQL), through TestClient."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from predictor.kernels.keys import KernelKey
from predictor.store import (
    MeasurementIn,
    add_measurements,
    add_validation,
    finish_run,
    register_device,
    save_regressor,
    save_stored_model,
    session_factory,
    session_scope,
    start_run,
)
from service.app import create_app
from service.dashboard import STATIC_DIR
from service.dashboard.charts import op_family
from service.settings import Settings
from tests.service.conftest import TOKEN

DEVICE = "dash-cpu-1t"
EVIL = "<script>alert(1)</script>"
CONV_ATTRS = {"group": 1, "strides": [1, 1], "kernel_shape": [3, 3]}


def conv_key(cin: int, op_type: str = "NchwcConv", bits: int = 32, sparsity: float = 0.0,
             pattern: str = "dense") -> KernelKey:
    """A 3x3 conv, 8x8 spatial, cin -> 32 channels; int8 spells out the layout flag as the runtime does."""
    attrs = dict(CONV_ATTRS, channels_last=1) if bits == 8 else dict(CONV_ATTRS)
    return KernelKey.from_dict({
        "op_type": op_type, "inputs": [[1, cin, 8, 8]], "outputs": [[1, 32, 8, 8]], "weight": [32, cin, 3, 3],
        "attrs": attrs, "dtype": "uint8" if bits == 8 else "float32", "bits": bits, "sparsity": sparsity,
        "sparsity_pattern": pattern,
    })


ADD_KEY = KernelKey.from_dict({"op_type": "Add", "inputs": [[1, 32, 8, 8], [1, 32, 8, 8]],
                               "outputs": [[1, 32, 8, 8]]})


def row(key: KernelKey, median_ms: float) -> MeasurementIn:
    return MeasurementIn(key=key.to_dict(), key_hash=key.key_hash, op_type=key.op_type, bits=key.bits,
                         median_ms=median_ms, p10_ms=median_ms * 0.9, p90_ms=median_ms * 1.1, repeats=20)


# Run 1: conv A (cin 16) and conv B (cin 32) in fp32, int8 and 50% unstructured sparsity, plus an Add.
RUN_1 = [
    row(conv_key(16), 3.0), row(conv_key(16, "QLinearConv", bits=8), 1.0),
    row(conv_key(32), 2.0), row(conv_key(32, "QLinearConv", bits=8), 1.0),
    row(conv_key(16, sparsity=0.5, pattern="unstructured"), 3.0),
    row(conv_key(32, sparsity=0.5, pattern="unstructured"), 2.5),
    row(ADD_KEY, 0.01),
]
# Run 2 measures conv B fp32 again: its point is the median of both runs, 2.2 ms.
RUN_2 = [row(conv_key(32), 2.4)]
MACS_A = 32 * 8 * 8 * 16 * 9
MACS_B = 32 * 8 * 8 * 32 * 9


def fill_store(engine: Engine, device_name: str = DEVICE) -> None:
    """The rows above, two regressors (held out), one run with drift, three validations."""
    sessions = session_factory(engine)
    with session_scope(sessions) as session:
        device = register_device(session, name=device_name, backend="onnxruntime",
                               execution_provider="CPUExecutionProvider", runtime_version="1.20.1", threads=1,
                               host="test host")
        start_run(session, device, "run-one", budget_minutes=5)
        add_measurements(session, device, "run-one", RUN_1)
        finish_run(session, "run-one", "finished", {
            "measured_per_op": {"Add": 1, "NchwcConv": 4, "QLinearConv": 2},
            "flat_axes": {"NchwcConv": ["sparsity"]},
            "drift": [{"elapsed_s": 120.0, "ratio": 1.05}, {"elapsed_s": 240.0, "ratio": 1.18}],
            "reference_ms": 1.25, "stopped_by": "budget",
            "remeasured": [{"label": "resnet/prune30", "reference": "fp32", "kept": 1, "ratios": [1.31, 1.02]}],
        })
        start_run(session, device, "run-two")
        add_measurements(session, device, "run-two", RUN_2)
        finish_run(session, "run-two", "finished", {"measured_per_op": {"NchwcConv": 1}, "drift": [],
                                                    "reference_ms": 1.2, "stopped_by": "space exhausted"})
        save_regressor(session, device, "NchwcConv", "tree", {"held_out": True, "n_test": 10, "n_samples": 50,
                                                              "mape": 0.05, "within_10pct": 0.9}, "v1")
        save_regressor(session, device, "QLinearConv", "tree", {"held_out": True, "n_test": 30, "n_samples": 120,
                                                                "mape": 0.25, "within_10pct": 0.5}, "v1")
        add_validation(session, device, model_name="resnet", config_name="fp32", predicted_ms=10.0,
                       measured_ms=10.5)
        add_validation(session, device, model_name="resnet", config_name="int8", predicted_ms=13.0,
                       measured_ms=10.0)
        # Measured on a busy host: 14 ms raw, 11.2 ms in the device's baseline state, which the prediction is for.
        add_validation(session, device, model_name="resnet", config_name="prune30", predicted_ms=11.0,
                       measured_ms=14.0, scaled_ms=11.2)


@pytest.fixture
def dash_settings(store_engine: Engine, store_url: str, tmp_path: Path) -> Settings:
    fill_store(store_engine)
    return Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN)


@pytest.fixture
def dash(dash_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(dash_settings)) as client:
        yield client


def test_devices_page_lists_each_device_with_its_numbers(dash: TestClient) -> None:
    response = dash.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert f'href="/devices/{DEVICE}"' in page
    for text in ("onnxruntime", "CPUExecutionProvider", "1.20.1", ">8<", "finished",
                 # (0.9 x 10 + 0.5 x 30) / 40 test kernels within 10%; (0.05 x 10 + 0.25 x 30) / 40 MAPE
                 "60% within ±10%, MAPE 20%"):
        assert text in page, text
    assert 'title="Add, NchwcConv, QLinearConv">3<' in page
    assert '<a href="/models"' in page and "/static/dashboard.css" in page


def test_device_page_shows_coverage_charts_and_drift(dash: TestClient) -> None:
    response = dash.get(f"/devices/{DEVICE}")
    assert response.status_code == 200
    page = response.text
    coverage = page[page.index('id="coverage"'):page.index("</table>", page.index('id="coverage"'))]
    # NchwcConv: 5 rows (one kernel in two runs), 4 kernels, 2 shapes, dense and 50% sparse, flat axis.
    nchwc = coverage[coverage.index("<code>NchwcConv</code>"):]
    nchwc = nchwc[:nchwc.index("</tr>")]
    assert "<td>5</td>" in nchwc and ">4</span>" in nchwc and "<td>2</td>" in nchwc
    assert "<td>0, 0.5</td>" in nchwc and "<td>sparsity</td>" in nchwc and "MAPE 5%" in nchwc
    assert "<code>QLinearConv</code>" in coverage and "<code>Add</code>" in coverage
    for chart in ("macs", "bits", "sparsity", "validation"):
        assert f'<canvas id="chart-{chart}"' in page
    assert "/static/vendor/chart.umd.js" in page
    assert 'data-device="dash-cpu-1t"' in page
    runs = page[page.index('id="runs"'):]
    assert "DRIFT +18.0% at 240 s" in runs and "(2 checks over threshold)" in runs
    assert "(1 model measured again after a spell or a slow phase of the host)" in runs
    assert runs.count("measured again") == 1
    assert "stable" in runs and "space exhausted" in runs
    assert '<div class="value">67%</div><small>within ±10% of 3 end-to-end measurements' in page


def test_unknown_device_is_a_404_page(dash: TestClient) -> None:
    response = dash.get("/devices/no-such-device")
    assert response.status_code == 404
    assert "Unknown device" in response.text and "no-such-device" in response.text
    assert dash.get("/api/dashboard/devices/no-such-device/charts").status_code == 404


def test_chart_data_has_the_numbers_of_the_stored_rows(dash: TestClient) -> None:
    response = dash.get(f"/api/dashboard/devices/{DEVICE}/charts")
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    assert data["kernels"] == 7
    scatter = {series["op_type"]: series["points"] for series in data["latency_vs_macs"]["series"]}
    assert sorted((p["macs"], p["latency_ms"], p["sparsity"]) for p in scatter["NchwcConv"]) == [
        (MACS_A, 3.0, 0.0), (MACS_A, 3.0, 0.5), (MACS_B, pytest.approx(2.2), 0.0), (MACS_B, 2.5, 0.5)]
    assert sorted((p["macs"], p["latency_ms"], p["bits"]) for p in scatter["QLinearConv"]) == [
        (MACS_A, 1.0, 8), (MACS_B, 1.0, 8)]
    assert scatter["Add"] == [{"macs": 2 * 32 * 8 * 8, "latency_ms": 0.01, "bits": 32, "sparsity": 0.0}]
    assert data["latency_vs_macs"]["total"] == data["latency_vs_macs"]["shown"] == 7

    bits = {(r["family"], r["bits"]): r for r in data["bits"]}
    # NchwcConv and QLinearConv are both Conv; speedups 3.0 / 1.0 and 2.2 / 1.0, median 2.6.
    assert bits[("Conv", 8)]["speedup"] == pytest.approx(2.6)
    assert bits[("Conv", 8)]["pairs"] == 2
    assert bits[("Conv", 32)] == {"family": "Conv", "bits": 32, "speedup": 1.0, "pairs": 2,
                                  "median_ms": pytest.approx(2.6), "kernels": 2}
    assert bits[("Add", 32)]["speedup"] is None  # nothing to pair with

    sparsity = [(r["family"], r["pattern"], r["sparsity"], r["speedup"], r["pairs"]) for r in data["sparsity"]]
    # Dense / sparse of the same shape: 3.0 / 3.0 and 2.2 / 2.5, median 0.94.
    assert sparsity == [("Conv", "unstructured", 0.0, 1.0, 0),
                        ("Conv", "unstructured", 0.5, pytest.approx(0.94), 2)]

    validation = data["validation"]
    assert validation["count"] == 3 and validation["band"] == 0.1
    # One meaning of error, as `latpred validate` has it: against the measurement in the baseline state.
    assert validation["within_band"] == pytest.approx(2 / 3)
    assert validation["mape"] == pytest.approx((0.5 / 10.5 + 0.3 + 0.2 / 11.2) / 3)
    assert [round(p["error"], 4) for p in validation["points"]] == [round(10 / 10.5 - 1, 4), 0.3,
                                                                   round(11 / 11.2 - 1, 4)]


def test_user_controlled_names_are_escaped(store_engine: Engine, store_url: str, tmp_path: Path) -> None:
    fill_store(store_engine, device_name=EVIL)
    with session_scope(session_factory(store_engine)) as session:
        save_stored_model(session, model_id=hashlib.sha256(b"evil").hexdigest(), name='"><img src=x onerror=alert(1)>',
                          size_bytes=4, inputs={}, kernels=[])
    settings = Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN)
    with TestClient(create_app(settings)) as client:
        listing = client.get("/").text
        assert EVIL not in listing
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listing
        assert f'href="/devices/{quote(EVIL, safe="")}"' in listing
        device = client.get(f"/devices/{quote(EVIL, safe='')}")
        assert device.status_code == 200
        assert EVIL not in device.text
        assert 'data-device="&lt;script&gt;alert(1)&lt;/script&gt;"' in device.text
        charts = client.get(f"/api/dashboard/devices/{quote(EVIL, safe='')}/charts")
        assert charts.status_code == 200 and charts.json()["device"] == EVIL
        missing = client.get(f"/devices/{quote('<b>nope</b>', safe='')}")
        assert missing.status_code == 404 and "<b>nope</b>" not in missing.text
        models = client.get("/models", params={"model": hashlib.sha256(b"evil").hexdigest()}).text
        assert "<img src=x" not in models and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in models
        assert f'<option value="{EVIL}"' not in models


def test_models_page_offers_models_devices_and_candidates(dash: TestClient, dash_settings: Settings,
                                                          store_engine: Engine) -> None:
    model_id = hashlib.sha256(b"model").hexdigest()
    with session_scope(session_factory(store_engine)) as session:
        save_stored_model(session, model_id=model_id, name="block.onnx", size_bytes=5, inputs={"x": [1, 4]},
                          kernels=[{"name": "k1"}, {"name": "k2"}])
    response = dash.get("/models", params={"model": model_id})
    assert response.status_code == 200
    page = response.text
    assert f'<option value="{model_id}" selected>block.onnx · 2 kernels · {model_id[:12]}</option>' in page
    assert f'<option value="{DEVICE}">{DEVICE}</option>' in page
    assert 'id="model-file"' in page and 'id="rank-button"' in page and 'id="chart-kernels"' in page
    assert 'value="int8" data-config="{&quot;default&quot;: {&quot;bits&quot;: 8}}" checked' in page


def test_models_page_lists_no_model_ids(dash: TestClient, store_engine: Engine) -> None:
    """The page is open: it names only the model its URL names; token holders list the others via the API."""
    ids = [hashlib.sha256(name).hexdigest() for name in (b"first", b"second")]
    with session_scope(session_factory(store_engine)) as session:
        for index, model_id in enumerate(ids):
            save_stored_model(session, model_id=model_id, name=f"m{index}.onnx", size_bytes=5, inputs={},
                              kernels=[{"name": "k"}])
    page = dash.get("/models").text
    assert not any(model_id in page or model_id[:12] in page for model_id in ids)
    assert 'id="list-models-button"' in page
    named = dash.get("/models", params={"model": ids[0]}).text
    assert ids[0] in named and ids[1] not in named
    assert ids[1] not in dash.get("/models", params={"model": "f" * 64}).text
    listing = dash.get("/api/models")
    assert listing.status_code == 401 and not any(model_id in listing.text for model_id in ids)
    listed = dash.get("/api/models", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert sorted(m["id"] for m in listed["data"]) == sorted(ids) and listed["count"] == 2


def test_token_protected_reads_close_the_pages(store_engine: Engine, store_url: str, tmp_path: Path) -> None:
    fill_store(store_engine)
    settings = Settings(database_url=store_url, home=tmp_path / "home", api_tokens=TOKEN, read_token_required=True)
    with TestClient(create_app(settings)) as client:
        for path in ("/", f"/devices/{DEVICE}", "/models"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert DEVICE not in response.text
        charts = f"/api/dashboard/devices/{DEVICE}/charts"
        assert client.get(charts).status_code == 401
        assert client.get(charts, headers={"Authorization": f"Bearer {TOKEN}"}).json()["kernels"] == 7


def test_chart_library_is_served_from_the_app(dash: TestClient) -> None:
    library = dash.get("/static/vendor/chart.umd.js")
    assert library.status_code == 200
    assert "Chart.js v4" in library.text[:200]
    assert "MIT License" in (STATIC_DIR / "vendor" / "chart.js.LICENSE.md").read_text()
    script = dash.get("/static/dashboard.js")
    assert script.status_code == 200 and "innerHTML" not in script.text


@pytest.mark.parametrize(("op_type", "family"), [
    ("Conv", "Conv"), ("NchwcConv", "Conv"), ("QLinearConv", "Conv"), ("FusedConv", "Conv"),
    ("ConvInteger", "Conv"), ("QGemm", "Gemm"), ("MatMulNBits", "MatMul"), ("FusedMatMul", "MatMul"),
    ("QLinearGlobalAveragePool", "GlobalAveragePool"), ("NchwcGlobalAveragePool", "GlobalAveragePool"),
    ("QuantizeLinear", "QuantizeLinear"), ("DequantizeLinear", "DequantizeLinear"), ("Add", "Add"),
])
def test_op_family_groups_runtime_variants(op_type: str, family: str) -> None:
    assert op_family(op_type) == family


def test_large_tables_are_charted_from_a_sample_of_whole_shapes(dash_settings: Settings, store_engine: Engine,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MAX_CHART_KERNELS the charts read a sample of shapes, every kernel of each: pairs stay pairs, the
    counts stay the device's."""
    with session_scope(session_factory(store_engine)) as session:
        device = register_device(session, name="big-cpu", backend="onnxruntime",
                                 execution_provider="CPUExecutionProvider", runtime_version="1.20.1", threads=1,
                                 host="test host")
        rows = []
        for cin in range(8, 208):  # 200 shapes, each in fp32 (2 ms) and int8 (1 ms)
            rows += [row(conv_key(cin), 2.0), row(conv_key(cin, "QLinearConv", bits=8), 1.0)]
        add_measurements(session, device, "run-big", rows)
    monkeypatch.setattr("service.dashboard.routes.MAX_CHART_KERNELS", 100)
    with TestClient(create_app(dash_settings)) as client:
        data = client.get("/api/dashboard/devices/big-cpu/charts").json()
        page = client.get("/devices/big-cpu").text
    assert data["kernels"] == 400 and data["sample_share"] == pytest.approx(0.25)
    assert data["latency_vs_macs"]["total"] == 400
    shown = data["latency_vs_macs"]["shown"]
    assert 40 <= shown <= 160, "about a quarter of the kernels"
    bits = {(r["family"], r["bits"]): r for r in data["bits"]}
    assert bits[("Conv", 8)]["speedup"] == pytest.approx(2.0)
    assert bits[("Conv", 8)]["pairs"] == bits[("Conv", 8)]["kernels"] == shown // 2, "every int8 kernel paired"
    assert "400 distinct kernels" in page  # the page's counts are the whole table's
    coverage = page[page.index('id="coverage"'):page.index("</table>", page.index('id="coverage"'))]
    qlinear = coverage[coverage.index("<code>QLinearConv</code>"):]
    assert "<td>200</td>" in qlinear[:qlinear.index("</tr>")]
