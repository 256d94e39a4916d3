"""What every request meets before a route reads its body: a rate for clients without a token, the token of
operations that need one, and the size of JSON bodies.

FastAPI reads and parses a JSON body before it runs a route's dependencies, so a token check there comes after
the whole body was received (a write without a token used to read 50 MB before its 401), and a body without a
limit is parsed whatever its size. This middleware answers first:
- 401 when the operation needs a token, before a byte of its body is read: every write under /api and /api/v1
  (any method but GET, HEAD and OPTIONS, except the questions POST /api/predict and /api/rank, which are reads; the
  rules below name paths as the unversioned alias spells them, service.api.versions), and with
  LATPRED_READ_TOKEN_REQUIRED every other /api operation but the health check and the OpenAPI document. The
  routes check the same with their dependencies; here an operation not listed as a read is a write (fail closed);
- 429 when a client address sent more than `anonymous_requests_per_minute` requests without a valid token
  (health checks and static files are not counted; a write without a token is answered 401 above, uncounted);
- 413 when a request body (POST, PUT, PATCH) is larger than `max_body_mb`: at once from its Content-Length, or
  as soon as a streamed body passes the limit (nothing more is read). The body is then handed to the route from
  memory. The model upload streams its own multipart body under LATPRED_MAX_UPLOAD_MB instead.
Each answer is problem+json (service.api.problems) with the code unauthorized, rate_limited or body_too_large.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from predictor.errors import LatpredError
from service.api.problems import Problem, ProblemCode, ProblemResponse
from service.api.tokens import TokenVerdict, stored_verdict, token_error
from service.api.versions import unversioned_path
from service.settings import Settings

__all__ = ["OPEN_QUESTIONS", "RequestLimitsMiddleware", "RequestRateLimiter"]

logger = logging.getLogger(__name__)

# Paths no rate applies to: load balancers poll health, and a page's static files come with the page.
_UNCOUNTED_PREFIXES = ("/api/health", "/static/")
# Reads that are POSTs (the question has a body): open unless reads need a token.
OPEN_QUESTIONS = frozenset({"/api/predict", "/api/rank"})
# Open even when reads need a token: load balancers, and the schema the /docs page loads.
_ALWAYS_OPEN = frozenset({"/api/health", "/api/openapi.json"})
# The multipart model upload streams its body under its own limit (service.api.uploads).
_STREAMED_UPLOADS = frozenset({("POST", "/api/models")})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Client addresses whose buckets are kept; the least recently seen are forgotten past it (memory stays bounded
# whatever the number of addresses, IPv6 included).
_MAX_TRACKED_CLIENTS = 10_000


class _BodyTooLarge(LatpredError):
    """The body passed its limit while it was read (answered 413 by the middleware)."""


class _ClientGone(LatpredError):
    """The client disconnected while its body was read (nothing to answer)."""


class RequestRateLimiter:
    """A token bucket per client address: `per_minute` requests a minute, bursts of up to as many."""

    def __init__(self, per_minute: int, max_clients: int = _MAX_TRACKED_CLIENTS) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def retry_after_s(self, client: str, now: float | None = None) -> float:
        """0 when the client may send this request now (it is counted), else the seconds until it may."""
        now = time.monotonic() if now is None else now
        rate_per_s = self.per_minute / 60.0
        tokens, updated = self._buckets.pop(client, (float(self.per_minute), now))
        tokens = min(float(self.per_minute), tokens + (now - updated) * rate_per_s)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[client] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return 0.0 if allowed else (1.0 - tokens) / rate_per_s


async def _answer(scope: Scope, receive: Receive, send: Send, problem: Problem,
                  headers: dict[str, str] | None = None) -> None:
    await ProblemResponse.of(problem, scope["path"], headers)(scope, receive, send)


async def _read_body(receive: Receive, limit_bytes: int) -> bytes:
    """The whole body, read chunk by chunk; _BodyTooLarge as soon as it passes the limit (read no further)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read already, then the client's own messages (its disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _token_action(method: str, path: str, read_token_required: bool) -> str | None:
    """"writing" or "reading" when the operation needs a token, None when it is open."""
    if not path.startswith("/api/") or path in _ALWAYS_OPEN:
        return None
    if method not in _SAFE_METHODS and path not in OPEN_QUESTIONS:
        return "writing"
    return "reading" if read_token_required else None


class RequestLimitsMiddleware:
    """Rate, token and body-size limits, answered before a route reads the body (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.rates = RequestRateLimiter(settings.anonymous_requests_per_minute) \
            if settings.anonymous_requests_per_minute > 0 else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        verdict = stored_verdict(state, self.settings, headers.get("authorization"))
        method: str = scope["method"]
        path = unversioned_path(scope["path"])
        action = _token_action(method, path, self.settings.read_token_required)
        if action is not None:
            detail = token_error(verdict, action)
            if detail is not None:
                await _answer(scope, receive, send, Problem(401, ProblemCode.UNAUTHORIZED, detail),
                              {"WWW-Authenticate": "Bearer"})
                return
        if self.rates is not None and verdict is not TokenVerdict.VALID and not path.startswith(_UNCOUNTED_PREFIXES):
            client = scope.get("client")
            wait_s = self.rates.retry_after_s(client[0] if client else "unknown")
            if wait_s > 0:
                detail = (f"too many requests without a token from this address: at most "
                          f"{self.settings.anonymous_requests_per_minute} a minute "
                          "(LATPRED_ANONYMOUS_REQUESTS_PER_MINUTE); send a token or retry later")
                await _answer(scope, receive, send, Problem(429, ProblemCode.RATE_LIMITED, detail),
                              {"Retry-After": str(math.ceil(wait_s))})
                return
        if method in _BODY_METHODS and (method, path) not in _STREAMED_UPLOADS:
            limit_bytes = int(self.settings.max_body_mb * 2**20)
            too_large = Problem(413, ProblemCode.BODY_TOO_LARGE,
                                f"request body exceeds {self.settings.max_body_mb:g} MB (LATPRED_MAX_BODY_MB); "
                                "send smaller batches")
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit_bytes:
                await _answer(scope, receive, send, too_large)
                return
            try:
                body = await _read_body(receive, limit_bytes)
            except _BodyTooLarge:
                await _answer(scope, receive, send, too_large)
                return
            except _ClientGone:
                return
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)
