"""Memos stay bounded and keep memoizing what was asked lately."""
from __future__ import annotations

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
