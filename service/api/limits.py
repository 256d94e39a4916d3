"""What every request meets before a route reads its body: a rate for clients without a token, the token of
routes that need one, and the size of JSON bodies.

FastAPI reads and parses a JSON body before it runs a route's dependencies, so a token check there comes after
the whole body was received (a write without a token used to read 50 MB before its 401), and a body without a
limit is parsed whatever its size. This middleware answers first:
- 429 when a client address sent more than `anonymous_requests_per_minute` requests without a valid token
  (health checks and static files are not counted);
- 401 when the route needs a token (every write; reads with LATPRED_READ_TOKEN_REQUIRED) and the request has
  none, before a byte of its body is read;
- 413 when a JSON body is larger than `max_body_mb`: at once from its Content-Length, or as soon as a streamed
  body passes the limit (nothing more is read). The body is then handed to the route from memory.
Routes without a JSON body (the multipart model upload) stream their own body under their own limit.
"""
from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import require_read_token, require_write_token
from service.api.tokens import TokenVerdict, stored_verdict, token_error
from service.settings import Settings

__all__ = ["RequestLimitsMiddleware", "RequestRateLimiter"]

logger = logging.getLogger(__name__)

# Paths no rate applies to: load balancers poll health, and a page's static files come with the page.
_UNCOUNTED_PREFIXES = ("/api/health", "/static/")
# Client addresses whose buckets are kept; the least recently seen are forgotten past it (memory stays bounded
# whatever the number of addresses, IPv6 included).
_MAX_TRACKED_CLIENTS = 10_000


@dataclass(frozen=True)
class _RouteRules:
    access: str | None  # "write", "read" or None: which token check the route's dependencies make
    json_body: bool  # FastAPI reads and parses the body before the route runs


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


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


def _rules_of(route: APIRoute) -> _RouteRules:
    calls = set()
    stack = [route.dependant]
    while stack:
        dependant = stack.pop()
        calls.add(dependant.call)
        stack.extend(dependant.dependencies)
    access = "write" if require_write_token in calls else "read" if require_read_token in calls else None
    return _RouteRules(access=access, json_body=route.body_field is not None)


async def _answer(scope: Scope, receive: Receive, send: Send, status_code: int, detail: str,
                  headers: dict[str, str] | None = None) -> None:
    await JSONResponse({"detail": detail}, status_code=status_code, headers=headers)(scope, receive, send)


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


class RequestLimitsMiddleware:
    """Rate, token and body-size limits, answered before a route reads the body (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.rates = RequestRateLimiter(settings.anonymous_requests_per_minute) \
            if settings.anonymous_requests_per_minute > 0 else None
        self._rules: dict[int, _RouteRules] = {}

    def _route_rules(self, scope: Scope) -> _RouteRules | None:
        for route in scope["app"].router.routes:
            if isinstance(route, APIRoute) and route.matches(scope)[0] is Match.FULL:
                rules = self._rules.get(id(route))
                if rules is None:
                    rules = self._rules[id(route)] = _rules_of(route)
                return rules
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        state: MutableMapping[str, Any] = scope.setdefault("state", {})
        verdict = stored_verdict(state, self.settings, headers.get("authorization"))
        path: str = scope["path"]
        if self.rates is not None and verdict is not TokenVerdict.VALID and not path.startswith(_UNCOUNTED_PREFIXES):
            client = scope.get("client")
            wait_s = self.rates.retry_after_s(client[0] if client else "unknown")
            if wait_s > 0:
                await _answer(scope, receive, send, 429,
                              f"too many requests without a token from this address: at most "
                              f"{self.settings.anonymous_requests_per_minute} a minute "
                              "(LATPRED_ANONYMOUS_REQUESTS_PER_MINUTE); send a token or retry later",
                              {"Retry-After": str(math.ceil(wait_s))})
                return
        rules = self._route_rules(scope)
        if rules is None:
            await self.app(scope, receive, send)
            return
        action = {"write": "writing", "read": "reading" if self.settings.read_token_required else None}.get(
            rules.access or "")
        if action is not None:
            detail = token_error(verdict, action)
            if detail is not None:
                await _answer(scope, receive, send, 401, detail, {"WWW-Authenticate": "Bearer"})
                return
        if rules.json_body:
            limit_bytes = int(self.settings.max_body_mb * 2**20)
            too_large = (f"request body exceeds {self.settings.max_body_mb:g} MB (LATPRED_MAX_BODY_MB); "
                         "send smaller batches")
            declared = headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit_bytes:
                await _answer(scope, receive, send, 413, too_large)
                return
            try:
                body = await _read_body(receive, limit_bytes)
            except _BodyTooLarge:
                await _answer(scope, receive, send, 413, too_large)
                return
            except _ClientGone:
                return
            receive = _replaying(body, receive)
        await self.app(scope, receive, send)
