"""Predict and rank questions answered in worker processes, each under a deadline, stopped when it passes or
when the client goes away.

One question can cost minutes of CPU (int8 quantization of a large graph, learning a model's fast path), and a
thread cannot be stopped: the work runs in a worker process instead, killed together with the optimizer
workers it started (it leads its own process group) when the question's deadline passes or its client
disconnects. A worker keeps the caches of service.api.predictions (prepared models, device predictors)
between questions; a killed one is replaced when the next question needs it. At most `predict_workers`
questions run at once and `predict_queue` more may wait (no longer than the deadline); others get 503.

A worker checks its cached predictor of a device against the store before each question (see
service.api.predictions), so writes made by any process reach it without being told. Workers are forked from a
forkserver that imported this module once, so a new one starts in milliseconds; each runs in an empty working
directory of its own.
"""
from __future__ import annotations

import asyncio
import atexit
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy import make_url
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive

from predictor.allocator import release_free_memory, tune_allocator
from predictor.runtime.optimizer import optimizer_limits
from service.api.database import StoreConnector
from service.api.errors import describe_error
from service.api.model_store import open_model_store
from service.api.predictions import PredictionCache, answer_question
from service.api.problems import HTTPProblem, Problem, ProblemCode
from service.settings import Settings

__all__ = ["PredictionWorkers", "worker_settings"]

logger = logging.getLogger(__name__)

_START_TIMEOUT_S = 120.0
_ORPHAN_CHECK_S = 1.0
_KILL_JOIN_TIMEOUT_S = 10.0
_WAIT_POLL_S = 0.05
_TIMED_OUT = "timed out"
_DIED = "died"
# Live pools, killed at interpreter exit: workers are not daemons (a daemon may not start the optimizer
# workers), so multiprocessing would otherwise wait for them at exit.
_POOLS: weakref.WeakSet[PredictionWorkers] = weakref.WeakSet()


def worker_settings(settings: Settings) -> Settings:
    """The settings with every path absolute: a worker runs in a directory of its own."""
    home = settings.home.resolve()
    url = make_url(settings.model_copy(update={"home": home}).resolved_database_url)
    if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:" \
            and not os.path.isabs(url.database):
        url = url.set(database=os.path.abspath(url.database))
    model_store = settings.model_store
    if model_store != "database":
        model_store = str(Path(model_store).expanduser().resolve())
    return settings.model_copy(update={"home": home, "database_url": url.render_as_string(hide_password=False),
                                       "model_store": model_store})


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    connection: Connection

    def kill(self) -> None:
        """Kill the worker and every process it started (its process group), and wait for it."""
        pid = self.process.pid
        if pid is not None and self.process.exitcode is None:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.join(timeout=_KILL_JOIN_TIMEOUT_S)


def _recv(connection: Connection) -> Any:
    try:
        return connection.recv()
    except (EOFError, OSError):
        return _DIED


async def _await_answer(connection: Connection, timeout_s: float) -> Any:
    """The worker's answer, _TIMED_OUT when it has none after timeout_s, _DIED when its end of the pipe closed.

    The event loop watches the pipe (no thread waits the question out); reading the answer, once it comes, takes a
    thread for as long as the copy.
    """
    loop = asyncio.get_running_loop()
    readable = loop.create_future()
    descriptor = connection.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(descriptor, ready)
    try:
        await asyncio.wait_for(readable, timeout_s)
    except TimeoutError:
        return _TIMED_OUT
    finally:
        loop.remove_reader(descriptor)
    return await run_in_threadpool(_recv, connection)


async def _client_gone(receive: Receive) -> None:
    """Return once the client disconnected (the request body was read already)."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except OSError:  # the connection broke: gone as well
        return


class PredictionWorkers:
    """The worker processes answering predict and rank (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._worker_settings = worker_settings(settings)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._started: list[_Worker] = []
        self._starting = 0
        self._waiting = 0
        self._closed = False
        _POOLS.add(self)

    @property
    def timeout_s(self) -> float:
        return self.settings.predict_timeout_s

    # ------------------------------------------------------------------------------------------ questions
    async def answer(self, kind: str, body: Mapping[str, Any], receive: Receive) -> Any:
        """The answer to a question ("predict" or "rank"); HTTPProblem for errors, 503 busy, 504 too slow.

        `receive` is the request's: a disconnect message from it stops the question.
        """
        worker = await self._checkout()
        healthy = False
        try:
            await run_in_threadpool(worker.connection.send, (kind, dict(body)))
            answer = asyncio.ensure_future(_await_answer(worker.connection, self.timeout_s))
            gone = asyncio.ensure_future(_client_gone(receive))
            try:
                await asyncio.wait({answer, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not answer.done():
                    # The client went away: stop the work now; the answer's wait then ends with the worker.
                    await run_in_threadpool(worker.kill)
                gone.cancel()
            outcome = await answer
            if gone.done() and not gone.cancelled() and outcome == _DIED:
                logger.info("%s: the client went away; its question was stopped", kind)
                raise HTTPProblem(499, ProblemCode.CLIENT_CLOSED_REQUEST, "the client closed the connection")
            if outcome == _TIMED_OUT:
                logger.warning("%s: stopped a question at the time limit of %g s", kind, self.timeout_s)
                raise HTTPProblem(
                    504, ProblemCode.DEADLINE_EXCEEDED,
                    f"the question took longer than the limit of {self.timeout_s:g} s of this server "
                    "(LATPRED_PREDICT_TIMEOUT_S) and was stopped; ask with fewer candidates or a smaller "
                    "model, or raise the limit")
            if outcome == _DIED:
                worker.process.join(timeout=_KILL_JOIN_TIMEOUT_S)
                logger.error("%s: the prediction worker died (exit code %s)", kind, worker.process.exitcode)
                raise HTTPProblem(500, ProblemCode.WORKER_DIED, "the prediction worker died answering this question "
                                  f"(exit code {worker.process.exitcode}); see the service log")
            healthy = True
            if isinstance(outcome, Problem):
                if outcome.status >= 500:
                    logger.warning("%s: %s", kind, outcome.detail)
                raise HTTPProblem(outcome.status, outcome.code, outcome.detail)
            _ok, payload = outcome
            return payload
        finally:
            await run_in_threadpool(self._checkin, worker, healthy)

    def _take_idle(self) -> _Worker | None:
        """An idle worker that is alive, or None; call with the lock held."""
        while self._idle:
            worker = self._idle.pop()
            # An idle worker's end of the pipe has nothing to read; readable means closed: the worker is gone (its
            # exit code may not have reached the forkserver yet).
            if worker.process.exitcode is None and not worker.connection.poll(0):
                return worker
            # Died while idle (killed from outside, or by the system for memory): another is started.
            logger.warning("a prediction worker died while idle (exit code %s)", worker.process.exitcode)
            self._started.remove(worker)
            worker.connection.close()
        return None

    async def _checkout(self) -> _Worker:
        """An idle worker, a new one, or the first one freed within the deadline; 503 when none comes.

        A question waiting for a worker polls (every _WAIT_POLL_S) instead of holding a thread of the pool the
        other routes run in.
        """
        capacity = self.settings.predict_workers
        deadline = time.monotonic() + self.timeout_s
        queued = False
        try:
            while True:
                with self._lock:
                    if self._closed:
                        raise HTTPProblem(503, ProblemCode.SHUTTING_DOWN, "the service is shutting down")
                    worker = self._take_idle()
                    if worker is not None:
                        return worker
                    if len(self._started) + self._starting < capacity:
                        self._starting += 1
                        break
                    if not queued:
                        if self._waiting >= self.settings.predict_queue:
                            raise self._busy(f"all {capacity} prediction workers are busy and {self._waiting} "
                                             "questions wait already (LATPRED_PREDICT_WORKERS, LATPRED_PREDICT_QUEUE)")
                        self._waiting += 1
                        queued = True
                if time.monotonic() >= deadline:
                    raise self._busy(f"no prediction worker became free within {self.timeout_s:g} s "
                                     "(LATPRED_PREDICT_TIMEOUT_S)")
                await asyncio.sleep(_WAIT_POLL_S)
        finally:
            if queued:
                with self._lock:
                    self._waiting -= 1
        try:
            worker = await run_in_threadpool(self._start_worker)
        except BaseException:
            with self._lock:
                self._starting -= 1
            raise
        with self._lock:
            self._starting -= 1
            self._started.append(worker)
        return worker

    def _busy(self, why: str) -> HTTPProblem:
        return HTTPProblem(503, ProblemCode.BUSY, f"too busy to answer now: {why}; retry later",
                           headers={"Retry-After": str(max(1, round(self.timeout_s / 4)))})

    def _start_worker(self) -> _Worker:
        context = _worker_context()
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=_serve_questions, name="latpred-predict",
            args=(child_end, self._worker_settings.model_dump(), os.getpid()))
        process.start()
        child_end.close()
        worker = _Worker(process=process, connection=parent_end)
        if not parent_end.poll(_START_TIMEOUT_S):
            worker.kill()
            raise RuntimeError(f"a prediction worker did not start within {_START_TIMEOUT_S:g} s")
        try:
            parent_end.recv()  # "ready"
        except EOFError as exc:
            worker.kill()
            raise RuntimeError(f"a prediction worker exited at start (exit code {process.exitcode})") from exc
        return worker

    def _checkin(self, worker: _Worker, healthy: bool) -> None:
        if not healthy or self._closed:
            worker.kill()
            worker.connection.close()
        with self._lock:
            if healthy and not self._closed:
                self._idle.append(worker)
            elif worker in self._started:
                self._started.remove(worker)

    def worker_pids(self) -> list[int]:
        """Process ids of the started workers (for the service's own checks and tests)."""
        with self._lock:
            return [worker.process.pid for worker in self._started if worker.process.pid is not None]

    def shutdown(self) -> None:
        """Kill every worker, busy ones included; questions still running answer 500 or 503."""
        with self._lock:
            self._closed = True
            workers, self._idle = list(self._started), []
        for worker in workers:
            worker.kill()
        with self._lock:
            for worker in self._idle:
                worker.connection.close()


def _worker_context() -> Any:
    """A forkserver that imported this module (and so the predictor) once: new workers start in milliseconds."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


@atexit.register
def _kill_workers_at_exit() -> None:
    for pool in list(_POOLS):
        pool.shutdown()


# ---------------------------------------------------------------------------------------------- the worker
def _exit_when_orphaned(server_pid: int) -> None:
    """Kill this worker's process group once the server is gone (killed without shutting its workers down)."""
    while True:
        time.sleep(_ORPHAN_CHECK_S)
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            os.killpg(0, signal.SIGKILL)


def _serve_questions(connection: Connection, settings_fields: dict[str, Any], server_pid: int) -> None:
    """The worker's loop: answer each question as ("ok", JSON) or a Problem, until the server closes the pipe."""
    # Its own process group, so the server kills it and the optimizer workers it starts in one call.
    os.setpgrp()
    tune_allocator()
    # An empty folder of its own as the working directory: nothing a model names by a relative path is there.
    os.chdir(tempfile.mkdtemp(prefix="latpred-predict-"))
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    threading.Thread(target=_exit_when_orphaned, args=(server_pid,), name="orphan-check", daemon=True).start()
    settings = Settings(**settings_fields)
    connector = StoreConnector(settings)
    cache = PredictionCache(open_model_store(settings), refresh_wait_s=settings.predictor_refresh_wait_s)
    connection.send("ready")
    with optimizer_limits(settings.optimizer_limits):
        while True:
            try:
                kind, body = connection.recv()
            except EOFError:  # the server closed the pipe
                cache.close()
                connector.close()
                return
            answer: tuple[str, Any] | Problem
            try:
                answer = ("ok", answer_question(kind, body, connector.get(), cache))
            except Exception as exc:
                known = describe_error(exc)
                if known is None:
                    logger.exception("%s failed", kind)
                    known = Problem(500, ProblemCode.INTERNAL_ERROR, "internal server error; see the service log")
                answer = known
            connection.send(answer)
            # What the question freed (a predictor replaced by a refresh, a prepared model evicted) goes back to the
            # system between questions, not kept for the worker's lifetime.
            release_free_memory()
