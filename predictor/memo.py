"""A memo whose memory stays bounded: when it reaches its capacity it starts over."""
from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["BoundedMemo"]

K = TypeVar("K")
V = TypeVar("V")


class BoundedMemo(dict[K, V], Generic[K, V]):
    """A dict for memoized values that is emptied when full, so a server answering fresh questions all day
    holds at most `capacity` entries and keeps memoizing what it was asked lately (a memo that stopped
    taking entries when full would keep the first day's keys and none of today's)."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity

    def put(self, key: K, value: V) -> None:
        if len(self) >= self.capacity and key not in self:
            self.clear()
        self[key] = value
