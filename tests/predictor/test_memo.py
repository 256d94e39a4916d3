"""Memos stay bounded and keep memoizing what was asked lately."""
from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from predictor.memo import BoundedMemo


def test_memo_starts_over_when_full_and_keeps_the_latest_entries() -> None:
    memo: BoundedMemo[int, str] = BoundedMemo(capacity=3)
    for key in range(3):
        memo.put(key, str(key))
    memo.put(1, "one")  # a key it holds is replaced, not a reason to start over
    assert dict(memo) == {0: "0", 1: "one", 2: "2"}
    memo.put(3, "3")
    assert dict(memo) == {3: "3"}
    for key in range(100):
        memo.put(key, str(key))
        assert len(memo) <= 3
    assert memo.get(99) == "99"


def test_lru_memo_evicts_the_least_recently_used_entry() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(capacity=2, lru=True)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.lookup("a") == 1  # "a" is now the most recently used
    memo.put("c", 3)
    assert dict(memo) == {"a": 1, "c": 3}
    memo.put("a", 10)  # replacing refreshes too
    memo.put("d", 4)
    assert dict(memo) == {"a": 10, "d": 4}
    memo.discard("a")
    memo.discard("missing")
    assert dict(memo) == {"d": 4}
    assert memo.lookup("missing") is None


def test_get_or_compute_builds_a_missing_value_once_under_concurrent_requests() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(capacity=4, lru=True)
    calls: list[int] = []
    started = threading.Event()

    def build() -> int:
        calls.append(1)
        started.wait(1.0)  # keep the others waiting on the same key
        return 42

    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(memo.get_or_compute, "k", build) for _ in range(4)]
        started.set()
        values = [future.result() for future in futures]
    assert values == [42, 42, 42, 42]
    assert calls == [1]
    assert memo.get_or_compute("k", lambda: 0) == 42


def test_a_failed_compute_memoizes_nothing() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(capacity=2)

    def fail() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        memo.get_or_compute("k", fail)
    assert "k" not in memo
    assert memo.get_or_compute("k", lambda: 7) == 7


def test_memo_pickles_with_its_entries_and_policy() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(capacity=3, lru=True)
    memo.put("a", 1)
    copy = pickle.loads(pickle.dumps(memo))
    assert dict(copy) == {"a": 1} and copy.capacity == 3 and copy.lru
    copy.put("b", 2)
    assert "b" not in memo
