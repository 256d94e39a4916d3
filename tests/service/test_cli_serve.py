"""`latpred serve` says where it serves before it starts; `latpred migrate` brings the store to head and exits."""
from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory

from predictor.store import create_store_engine, schema_revision
from predictor.store.database import MIGRATIONS_DIR
from service.server import free_port, stop_process, wait_until_serving
from tests.service.cli_runs import assert_one_line_error, run_latpred

pytestmark = pytest.mark.usefixtures("cli_home")

REPO = Path(__file__).resolve().parents[2]




def _first_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout_s), "latpred serve printed nothing"
    return process.stdout.readline()


def test_serve_prints_its_url_then_serves(cli_home: Path) -> None:
    port = free_port()
    env = {**os.environ, "LATPRED_HOME": str(cli_home)}
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port),
                                "--no-job-worker"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = _first_line(process, timeout_s=90)
        url = f"http://127.0.0.1:{port}"
        assert line == f"serving {url} (dashboard at /, API docs at /docs)\n"
        wait_until_serving(url, process, timeout_s=90)
    finally:
        stop_process(process, 30, signal.SIGINT)


def test_serve_on_a_busy_port_is_the_users_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        run = run_latpred(capsys, "serve", "--port", str(port), "--no-job-worker")
    assert_one_line_error(run, 2, f"cannot listen on 127.0.0.1:{port}")
    assert run.stdout == ""


def test_migrate_brings_a_new_store_to_head_and_exits(capsys: pytest.CaptureFixture[str],
                                                      cli_home: Path) -> None:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    database = cli_home / "latpred.db"
    for _ in range(2):  # again: nothing left to do, the same answer
        run = run_latpred(capsys, "migrate")
        assert run.status == 0 and run.stderr == "", run
        assert run.stdout == f"sqlite:///{database.resolve()}: schema at revision {head}\n"
    engine = create_store_engine(f"sqlite:///{database}")
    try:
        assert schema_revision(engine) == head
    finally:
        engine.dispose()
