"""Options of the `latpred` CLI: variables standing in for --device, --token and the service URL; listed choices."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnxruntime
import pytest

from predictor.errors import LatpredError
from service.cli import profile as profile_command
from service.cli.options import Backend, ExecutionProvider
from tests import factories
from tests.service.cli_runs import assert_one_line_error, run_latpred, seed_device

pytestmark = pytest.mark.usefixtures("cli_home")






@pytest.mark.parametrize(("command", "variables"), [
    ("profile", ["LATPRED_DEVICE", "LATPRED_TOKEN", "LATPRED_URL"]),
    ("predict", ["LATPRED_DEVICE"]),
    ("kernels", ["LATPRED_DEVICE"]),
    ("rank", ["LATPRED_DEVICE"]),
    ("validate", ["LATPRED_DEVICE"]),
    ("train", ["LATPRED_DEVICE"]),
])
def test_the_help_names_the_variables(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                                      command: str, variables: list[str]) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    run = run_latpred(capsys, command, "--help")
    assert run.status == 0
    for variable in variables:
        assert f"env var: {variable}" in run.stdout


def test_latpred_device_stands_in_for_device(capsys: pytest.CaptureFixture[str], cli_home: Path,
                                             residual_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    device = seed_device(cli_home, factories.residual_model())
    monkeypatch.setenv("LATPRED_DEVICE", device)
    run = run_latpred(capsys, "predict", str(residual_file), "--json")
    assert run.status == 0, run
    assert json.loads(run.stdout)["device"] == device
    # The option still wins over the variable.
    assert_one_line_error(run_latpred(capsys, "predict", str(residual_file), "--device", "other"), 2,
                          "unknown device 'other'")


class _StopBeforeUpload(LatpredError):
    pass


def test_latpred_url_and_token_reach_the_upload(capsys: pytest.CaptureFixture[str], residual_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class RecordingSink:
        def __init__(self, base_url: str, token: str | None, device_name: str) -> None:
            seen.update(url=base_url, token=token, device=device_name)

        def register_device(self, fields: dict[str, Any]) -> None:
            raise _StopBeforeUpload("stopped before the upload")

    monkeypatch.setattr(profile_command, "HttpSink", RecordingSink)
    monkeypatch.setenv("LATPRED_URL", "http://latpred.example:8000")
    monkeypatch.setenv("LATPRED_TOKEN", "s3cret")
    monkeypatch.setenv("LATPRED_DEVICE", "agent-1")
    run = run_latpred(capsys, "profile", "--for-model", str(residual_file))
    assert_one_line_error(run, 2, "stopped before the upload")
    assert seen == {"url": "http://latpred.example:8000", "token": "s3cret", "device": "agent-1"}


def test_backend_and_execution_provider_list_their_choices(capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    shown = " ".join(run_latpred(capsys, "profile", "--help").stdout.split())
    assert "onnxruntime|tensorrt" in shown
    assert "CPUExecutionProvider|CUDAExecutionProvider" in shown
    refused = run_latpred(capsys, "profile", "--device", "d", "--backend", "openvino")
    assert_one_line_error(refused, 2, "'openvino' is not one of 'onnxruntime', 'tensorrt'")
    refused = run_latpred(capsys, "profile", "--device", "d", "--execution-provider", "cpu")
    assert_one_line_error(refused, 2, "'CPUExecutionProvider'")


def test_the_choices_are_onnxruntimes_names() -> None:
    assert {member.value for member in Backend} == {"onnxruntime", "tensorrt"}
    assert {member.value for member in ExecutionProvider} <= set(onnxruntime.get_all_providers())


def test_a_provider_this_host_lacks_is_the_users_error(capsys: pytest.CaptureFixture[str]) -> None:
    missing = next(p.value for p in ExecutionProvider if p.value not in onnxruntime.get_available_providers())
    run = run_latpred(capsys, "profile", "--device", "d", "--execution-provider", missing)
    assert_one_line_error(run, 2, f"execution provider {missing} is not available here")
