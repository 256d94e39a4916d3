"""The one cache type: a memo whose memory stays bounded.

Two ways to stay bounded. The default starts over when full (cheapest: the hot memos of key predictions and
fast-path keys read it as a plain dict). `lru=True` evicts the least recently used entry instead, for caches
of costly values (prepared models, device predictors, kernels per config, built engines), where keeping the
ones asked about lately matters more than a few nanoseconds per read.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["BoundedMemo"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedMemo(dict[K, V], Generic[K, V]):
    """A dict for memoized values holding at most `capacity` entries.

    Default: emptied when full, so a server answering fresh questions all day keeps memoizing what it was
    asked lately (a memo that stopped taking entries when full would keep the first day's keys and none of
    today's). `lru=True`: the least recently used entry goes; `lookup` and `get_or_compute` count as a use
    (plain `get` and `[]` read without touching the order).
    Writes go through `put`, `discard` and `get_or_compute`, which are thread-safe; `get_or_compute` builds a
    missing value once even when several threads ask for it at the same time.
    """

    def __init__(self, capacity: int, *, lru: bool = False) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"a memo holds at least one entry, not {capacity}")
        self.capacity = capacity
        self.lru = lru
        self._lock = threading.Lock()
        self._building: dict[K, threading.Lock] = {}

    def put(self, key: K, value: V) -> None:
        with self._lock:
            if self.lru:
                self.pop(key, None)  # re-inserted last: the most recently used
                while len(self) >= self.capacity:
                    del self[next(iter(self))]
            elif len(self) >= self.capacity and key not in self:
                self.clear()
            self[key] = value

    def lookup(self, key: K) -> V | None:
        """The value memoized for `key` (None if absent); in LRU mode it becomes the most recently used."""
        if not self.lru:
            return self.get(key)
        with self._lock:
            value = self.pop(key, None)
            if value is not None:
                self[key] = value
            return value

    def discard(self, key: K) -> None:
        with self._lock:
            self.pop(key, None)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The value memoized for `key`, computed by `compute()` and memoized if absent (once per key at a time)."""
        value = self.lookup(key)
        if value is not None:
            return value
        with self._lock:
            key_lock = self._building.setdefault(key, threading.Lock())
        try:
            with key_lock:
                value = self.lookup(key)
                if value is None:
                    value = compute()
                    self.put(key, value)
        finally:
            with self._lock:
                self._building.pop(key, None)
        return value

    def __reduce__(self) -> tuple[Any, ...]:
        # Locks do not pickle: a copy gets its own, with the same entries.
        return (_rebuild_memo, (self.capacity, self.lru, list(self.items())))


def _rebuild_memo(capacity: int, lru: bool, items: list[tuple[Any, Any]]) -> BoundedMemo[Any, Any]:
    memo: BoundedMemo[Any, Any] = BoundedMemo(capacity, lru=lru)
    memo.update(items)
    return memo
