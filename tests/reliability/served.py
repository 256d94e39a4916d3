"""Helpers of the tests that probe a real `latpred serve` process: its settings, raw HTTP, its processes."""
from __future__ import annotations

import json
import os
import select
import socket
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select as sql_select

from predictor.store import ModelBlob, StoredModel, create_store_engine
from service.server import server_process
from tests.service.conftest import TOKEN

__all__ = ["RawAnswer", "Served", "chunked", "pending_question", "prediction_workers", "raw_http", "rss_kb", "serve"]

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass(frozen=True)
class Served:
    """A running server: its URL and process id, its log, data directory and store."""

    url: str
    pid: int
    log_path: Path
    home: Path
    store_url: str

    def client(self, token: bool = True, timeout_s: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH if token else {}, timeout=timeout_s)

    def model_bytes(self) -> set[str]:
        """Ids of the models whose bytes the server keeps (in the store; never a file on its own disk)."""
        assert not (self.home / "models").exists(), "a model file was written to the server's disk"
        engine = create_store_engine(self.store_url)
        try:
            with engine.connect() as connection:
                return set(connection.execute(sql_select(ModelBlob.model_id)).scalars())
        finally:
            engine.dispose()

    def model_rows(self) -> set[str]:
        """Ids of the model rows in the store (complete or not), read from the database directly."""
        engine = create_store_engine(self.store_url)
        try:
            with engine.connect() as connection:
                return set(connection.execute(sql_select(StoredModel.id)).scalars())
        finally:
            engine.dispose()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def serve(root: Path, store_url: str, **settings: object) -> Iterator[Served]:
    """`latpred serve` in a child process with a token, this store and these LATPRED_* settings."""
    home = root / "home"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATPRED_")}
    env.update(LATPRED_HOME=str(home), LATPRED_DATABASE_URL=store_url, LATPRED_API_TOKENS=TOKEN)
    env.update({f"LATPRED_{name.upper()}": str(value) for name, value in settings.items()})
    log_path = root / "server.log"
    with server_process(env, log_path=log_path) as server:
        yield Served(url=server.url, pid=server.process.pid, log_path=log_path, home=home, store_url=store_url)


@dataclass(frozen=True)
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    sent_body_bytes: int


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the server closed the connection without an answer (got {data[:200]!r})")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def raw_http(url: str, method: str, path: str, headers: Mapping[str, str], body: Iterable[bytes] = (),
             timeout_s: float = 60.0) -> RawAnswer:
    """Send the head, then body chunks only while the server has not answered; the answer and what was sent.

    The server may answer before the body is complete (or before any of it): sending stops at its first byte.
    """
    parts = urlsplit(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}",
             *(f"{name}: {value}" for name, value in headers.items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout_s) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        sent = 0
        for chunk in body:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        status, answer_headers, answer_body = _read_answer(sock)
    return RawAnswer(status=status, headers=answer_headers, body=answer_body, sent_body_bytes=sent)


@contextmanager
def pending_question(url: str, path: str, question: Mapping[str, object],
                     headers: Mapping[str, str] | None = None) -> Iterator[socket.socket]:
    """A question sent and not waited for; leaving the block closes the connection (the client goes away)."""
    parts = urlsplit(url)
    body = json.dumps(question).encode()
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{name}: {value}" for name, value in (headers or {}).items())]
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        yield sock


def chunked(total_bytes: int, chunk_bytes: int = 64 * 1024, fill: bytes = b" ") -> Iterator[bytes]:
    """A body of `total_bytes` in HTTP/1.1 chunked encoding (the sender declares no length)."""
    sent = 0
    while sent < total_bytes:
        size = min(chunk_bytes, total_bytes - sent)
        yield f"{size:x}\r\n".encode() + fill * size + b"\r\n"
        sent += size
    yield b"0\r\n\r\n"


def _parents() -> dict[int, int]:
    """Process id -> parent process id of every process (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def prediction_workers(server_pid: int) -> set[int]:
    """The server's prediction workers: its descendants that lead a process group (service.api.workers)."""
    parents = _parents()
    descendants: set[int] = set()
    frontier = {server_pid}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - descendants
        descendants |= frontier
    leaders = set()
    for pid in descendants:
        try:
            if os.getpgid(pid) == pid:
                leaders.add(pid)
        except ProcessLookupError:
            pass
    return leaders


def rss_kb(pid: int) -> int:
    """Resident memory of a process in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
