"""How a `latpred` run ends: --version, exit 2 with one line for the user's errors, 1 for bugs, --debug."""
from __future__ import annotations

import socket
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from service.cli import devices as devices_command
from tests.service.cli_runs import assert_one_line_error, run_latpred

pytestmark = pytest.mark.usefixtures("cli_home")






def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    run = run_latpred(capsys, "--version")
    assert (run.status, run.stdout, run.stderr) == (0, f"latpred {version('latpred')}\n", "")


def test_version_through_the_module_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "service.cli", "--version"], capture_output=True, text=True,
                          timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, f"latpred {version('latpred')}")


def test_a_users_error_is_exit_2_and_one_line(capsys: pytest.CaptureFixture[str], residual_file: Path) -> None:
    run = run_latpred(capsys, "predict", str(residual_file), "--device", "nope")
    assert_one_line_error(run, 2, "unknown device 'nope'")


def test_debug_adds_the_traceback_and_debug_logging(capsys: pytest.CaptureFixture[str], residual_file: Path) -> None:
    run = run_latpred(capsys, "--debug", "predict", str(residual_file), "--device", "nope")
    assert run.status == 2
    assert "Traceback (most recent call last)" in run.stderr and "UnknownDeviceError" in run.stderr
    assert " DEBUG " in run.stderr  # the store's connection, logged at debug level
    assert run.error_lines[-1].startswith("latpred: error: unknown device 'nope'")


def test_a_bug_is_exit_1_one_line_that_says_so(capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(session: object) -> list[object]:
        raise KeyError("boom")

    monkeypatch.setattr(devices_command, "list_devices", broken)
    run = run_latpred(capsys, "devices")
    assert_one_line_error(run, 1, "internal error, a bug in latpred: KeyError: 'boom'")
    assert "--debug" in run.stderr
    debugged = run_latpred(capsys, "--debug", "devices")
    assert debugged.status == 1 and "Traceback (most recent call last)" in debugged.stderr
    assert "raise KeyError" in debugged.stderr


def test_usage_errors_are_exit_2_and_one_line(capsys: pytest.CaptureFixture[str], residual_file: Path) -> None:
    assert_one_line_error(run_latpred(capsys, "predict", str(residual_file)), 2, "--device")
    assert_one_line_error(run_latpred(capsys, "rank", str(residual_file), "--device", "d"), 2, "--configs")
    assert_one_line_error(run_latpred(capsys, "no-such-command"), 2, "no-such-command")


def test_no_command_shows_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    run = run_latpred(capsys)
    assert (run.status, run.stderr) == (2, "")
    assert "Usage: latpred" in run.stdout and "migrate" in run.stdout


def test_a_bad_setting_is_the_users_error(capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATPRED_MAX_UPLOAD_MB", "lots")
    assert_one_line_error(run_latpred(capsys, "devices"), 2, "LATPRED_MAX_UPLOAD_MB")


def test_an_unreachable_store_is_the_users_error(capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATPRED_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert_one_line_error(run_latpred(capsys, "devices"), 2, "cannot connect to database")


def test_an_unreachable_service_is_the_users_error(capsys: pytest.CaptureFixture[str], residual_file: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    run = run_latpred(capsys, "profile", "--device", "agent", "--for-model", str(residual_file), "--to", url)
    assert run.status == 2, run
    assert "Traceback" not in run.stderr
    *retries, last = run.error_lines
    assert last.startswith("latpred: error: ") and "127.0.0.1" in last
    # The client's retries say so as they go, one warning line each.
    assert all(line.startswith("latpred: warning: ") for line in retries), run.stderr


def test_a_service_url_that_is_no_url_is_refused_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    run = run_latpred(capsys, "profile", "--device", "agent", "--to", "latpred.example:8000")
    assert_one_line_error(run, 2, "--to takes the service's http:// or https:// URL, not 'latpred.example:8000'")
