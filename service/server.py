"""Serving the REST app with uvicorn (what `latpred serve` runs), in this process or in a child process."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from predictor.errors import LatpredError
from predictor.store import open_store
from service.app import create_app
from service.settings import Settings, get_settings

__all__ = ["ServerProcess", "ServerStartError", "free_port", "run_server", "server_process", "stop_process",
           "wait_until_serving"]

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parents[1]


def run_server(host: str, port: int, settings: Settings | None = None, workers: int = 1,
               job_worker: bool = False) -> None:
    """Serve the API on host:port until interrupted; the store is the one named by the settings.

    `workers` > 1 runs that many server processes (uvicorn's, on one port), each with its own prediction workers
    and caches: they share everything through the store, so they answer alike. Their settings come from the
    LATPRED_* environment (each process reads it), so `settings` must be None then. `job_worker` also runs one
    `latpred worker` child process for the jobs the API queues (stopped with the server).
    """
    if not logging.getLogger().handlers:  # `latpred serve` configured it already; a bare run_server has none
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if workers > 1 and settings is not None:
        raise ValueError("several workers read their settings from the LATPRED_* environment; pass no settings")
    # Migrate once, before any process starts: not each worker racing the others.
    open_store(settings or get_settings()).close()
    with ExitStack() as stack:
        if job_worker:
            stack.enter_context(_job_worker_process())
        logger.info("serving latpred on http://%s:%d with %d process(es) (docs at /docs)", host, port, workers)
        if workers > 1:
            uvicorn.run("service.app:create_app", factory=True, host=host, port=port, workers=workers,
                        log_level="warning")
        else:
            uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@contextmanager
def _job_worker_process(stop_timeout_s: float = 15.0) -> Iterator[subprocess.Popen[bytes]]:
    """`latpred worker` in a child process (same environment) while the block runs."""
    process = subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--exit-with", str(os.getpid())],
                               cwd=os.getcwd())
    try:
        yield process
    finally:
        stop_process(process, stop_timeout_s)


def stop_process(process: subprocess.Popen[Any], timeout_s: float, sig: int = signal.SIGTERM) -> None:
    """Ask a child process to stop with `sig`; kill it if it has not stopped within `timeout_s`."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerStartError(LatpredError, RuntimeError):
    """The child server exited or did not answer /api/health in time (the message has its log, if kept)."""


def wait_until_serving(url: str, process: subprocess.Popen[Any], timeout_s: float) -> None:
    """Return once GET `url`/api/health answers 200; ServerStartError if the process exits or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            what = (f"exited with {process.returncode}" if process.returncode is not None
                    else f"did not answer /api/health within {timeout_s:g} s")
            raise ServerStartError(f"the server {what}")
        time.sleep(0.2)


@dataclass(frozen=True)
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def server_process(env: Mapping[str, str], log_path: Path | None = None, python: str = sys.executable,
                   start_timeout_s: float = 60.0, stop_timeout_s: float = 15.0, workers: int = 1,
                   job_worker: bool = False) -> Iterator[ServerProcess]:
    """`run_server` in a child process on a free loopback port, configured by `env` (LATPRED_* settings).

    Yields once GET /api/health answers 200; terminates the child on exit (killed if it does not stop).
    Its output goes to `log_path` when given, else to this process's. Used by the tests and benchmarks
    that need a real `latpred serve`.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ExitStack() as stack:
        log = stack.enter_context(log_path.open("w")) if log_path is not None else None
        process = subprocess.Popen(
            [python, "-c", "from service.server import run_server; "
                           f"run_server('127.0.0.1', {port}, workers={workers}, job_worker={job_worker})"],
            cwd=_REPO_ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT if log is not None else None,
        )
        try:
            try:
                wait_until_serving(url, process, start_timeout_s)
            except ServerStartError as exc:
                output = f":\n{log_path.read_text()}" if log_path is not None else ""
                raise ServerStartError(f"{exc}{output}") from None
            yield ServerProcess(url=url, process=process)
        finally:
            stop_process(process, stop_timeout_s)
