"""The CLI's output: each warning once, on stderr; and the CLI's layout (a module per command, imports on top)."""
from __future__ import annotations

import ast
import json
from importlib.metadata import entry_points
from pathlib import Path

import onnx
import pytest

import service.cli
from tests import factories
from tests.service.cli_runs import run_latpred, seed_device

pytestmark = pytest.mark.usefixtures("cli_home")

CLI_DIR = Path(service.cli.__file__).parent
FALLBACK = "no measurements or regressor for Gemm on cpu-seeded: 1 kernel(s) predicted by the bandwidth fallback"




@pytest.fixture
def gemm_file(tmp_path: Path) -> Path:
    """A model of a kernel the seeded device never measured: predicted by the fallback, with a warning."""
    path = tmp_path / "fc.onnx"
    onnx.save(factories.gemm_model(), path)
    return path


def test_predict_prints_each_warning_once(capsys: pytest.CaptureFixture[str], cli_home: Path,
                                          gemm_file: Path) -> None:
    device = seed_device(cli_home, factories.residual_model())
    run = run_latpred(capsys, "predict", str(gemm_file), "--device", device)
    assert run.status == 0, run
    assert run.error_lines == [f"latpred: warning: {FALLBACK}"]
    as_json = run_latpred(capsys, "predict", str(gemm_file), "--device", device, "--json")
    assert as_json.stderr == ""  # the document holds them
    assert json.loads(as_json.stdout)["warnings"] == [FALLBACK]


def test_rank_prints_each_candidates_warnings_once(capsys: pytest.CaptureFixture[str], cli_home: Path,
                                                   gemm_file: Path, tmp_path: Path) -> None:
    device = seed_device(cli_home, factories.residual_model())
    configs = tmp_path / "configs.json"
    configs.write_text(json.dumps({"fp16": {"default": {"bits": 16}}, "sparse": {"default": {"sparsity": 0.5}}}))
    run = run_latpred(capsys, "rank", str(gemm_file), "--device", device, "--configs", str(configs))
    assert run.status == 0, run
    as_json = run_latpred(capsys, "rank", str(gemm_file), "--device", device, "--configs", str(configs), "--json")
    expected = [f"latpred: warning: {row['name']}: {warning}"
                for row in json.loads(as_json.stdout)["ranked"] for warning in row["warnings"]]
    assert expected and run.error_lines == expected
    assert len(set(run.error_lines)) == len(run.error_lines)


def test_the_console_script_is_the_packages_main() -> None:
    (script,) = [point for point in entry_points(group="console_scripts") if point.name == "latpred"]
    assert script.value == "service.cli:main"
    assert script.load() is service.cli.main


def _imports_inside_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    names = inner.module if isinstance(inner, ast.ImportFrom) else inner.names[0].name
                    found.append(f"{path.name}: {names}")
    return found


def test_commands_import_on_top_but_the_server_extra() -> None:
    """Imports hidden in functions only where a device agent's install lacks the module (`serve`, `worker`)."""
    hidden = [entry for path in sorted(CLI_DIR.glob("*.py")) for entry in _imports_inside_functions(path)]
    assert sorted(hidden) == ["serve.py: service.server", "serve.py: service.worker"]
