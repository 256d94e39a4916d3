"""Bearer tokens: whether a request's Authorization header holds one of LATPRED_API_TOKENS, judged once per request.

The request-limits middleware judges the header before any body is read (a write without a token is refused
before its body arrives) and keeps the verdict in the request's state; the routes' dependencies read it there.
"""
from __future__ import annotations

import enum
import hmac
from collections.abc import MutableMapping
from typing import Any

from service.settings import Settings

__all__ = ["TokenVerdict", "judge_token", "stored_verdict", "token_error"]

_STATE_KEY = "latpred_token_verdict"


class TokenVerdict(enum.Enum):
    VALID = "valid"
    NOT_CONFIGURED = "not configured"
    MISSING = "missing"
    INVALID = "invalid"


def judge_token(settings: Settings, authorization: str | None) -> TokenVerdict:
    """The verdict on an Authorization header's value ("Bearer <token>"), in time independent of the tokens."""
    tokens = settings.tokens
    if not tokens:
        return TokenVerdict.NOT_CONFIGURED
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return TokenVerdict.MISSING
    offered = credentials.encode()
    # Compare against every token (no early exit) so timing says nothing about which one nearly matched.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token.encode())
    return TokenVerdict.VALID if matched else TokenVerdict.INVALID


def token_error(verdict: TokenVerdict, action: str) -> str | None:
    """The 401 detail for `action` ("writing", "reading") under this verdict; None when it is allowed."""
    if verdict is TokenVerdict.VALID:
        return None
    if verdict is TokenVerdict.NOT_CONFIGURED:
        return f"{action} is disabled: LATPRED_API_TOKENS is not set on the server"
    if verdict is TokenVerdict.MISSING:
        return f"{action} needs an 'Authorization: Bearer <token>' header"
    return "invalid token"


def stored_verdict(state: MutableMapping[str, Any], settings: Settings, authorization: str | None) -> TokenVerdict:
    """The verdict kept in a request's state (scope["state"]), judged and kept now if there is none yet."""
    verdict = state.get(_STATE_KEY)
    if not isinstance(verdict, TokenVerdict):
        verdict = judge_token(settings, authorization)
        state[_STATE_KEY] = verdict
    return verdict
