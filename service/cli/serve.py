"""`latpred serve` and `latpred worker`: the REST service and dashboard, and the worker for the jobs it queues.

Both need the server extra (`pip install 'latpred[server]'`: fastapi, uvicorn); a device agent's install has only
the base, so service.server and service.worker are imported when these commands run, not with the CLI.
"""
from __future__ import annotations

import signal
import socket
import sys
import threading
from typing import Annotated, NoReturn

import typer

from service.cli.inputs import fail, load_settings
from service.cli.output import emit_line

__all__ = ["serve", "worker"]

# What the server extra installs (pyproject.toml), as import names.
_SERVER_EXTRA_MODULES = frozenset({"fastapi", "starlette", "uvicorn", "multipart", "python_multipart"})


def _missing_server_extra(exc: ModuleNotFoundError) -> NoReturn:
    """Fail as the user's error when the server extra is not installed; anything else missing is a bug."""
    if (exc.name or "").split(".")[0] not in _SERVER_EXTRA_MODULES:
        raise exc
    fail(f"this command needs the server extra, which is not installed (no module {exc.name!r}): "
         "pip install 'latpred[server]'")


def serve(
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes on the port (they share the "
                                                              "store: PostgreSQL for more than a few)")] = 1,
    job_worker: Annotated[bool, typer.Option(help="also run one `latpred worker` for the jobs the API queues "
                                                  "(--no-job-worker where workers run elsewhere)")] = True,
) -> None:
    """Run the REST service and dashboard (see docs/scale.md for several processes and hosts).

    Prints the URL it serves on, then serves until interrupted.
    """
    try:
        from service.server import run_server  # the server extra (see the module docstring)
    except ModuleNotFoundError as exc:
        _missing_server_extra(exc)
    load_settings()  # bad LATPRED_* settings are the user's error, said before anything starts
    _check_can_listen(host, port)
    shown = f"[{host}]" if ":" in host else host
    emit_line(f"serving http://{shown}:{port} (dashboard at /, API docs at /docs)")
    sys.stdout.flush()
    run_server(host, port, workers=workers, job_worker=job_worker)


def _check_can_listen(host: str, port: int) -> None:
    """Say now, as the user's error, what uvicorn would otherwise log and exit on: an address in use or not ours."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port}: {exc.strerror}")


def worker(
    once: Annotated[bool, typer.Option(help="run the queued jobs, then exit")] = False,
    exit_with: Annotated[int | None, typer.Option(hidden=True, help="exit once this process is gone")] = None,
) -> None:
    """Run the background jobs (regressor training) that any service process queues in the store."""
    try:
        from service.worker import JobWorker  # the server extra (see the module docstring)
    except ModuleNotFoundError as exc:
        _missing_server_extra(exc)
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    job_worker = JobWorker(load_settings(), exit_with=exit_with)
    try:
        done = job_worker.run(stop, once=once)
    finally:
        job_worker.close()
    if once:
        emit_line(f"ran {done} job(s)")
