"""Freed memory goes back to the system: glibc's mmap threshold fixed, and the heap trimmed after big work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from predictor.allocator import _glibc, release_free_memory, tune_allocator

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's malloc only (this host's C library is another)")

# In a fresh interpreter: a 2 MiB block freed first (glibc then serves blocks of that size from its heap), then
# 100 such blocks each followed by a small one that stays, so the heap's top never frees; the big ones freed.
_SCRIPT = """
import sys
import numpy as np
from predictor.allocator import release_free_memory, tune_allocator

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

mode = sys.argv[1]
if mode == "tuned":
    tune_allocator()
del_first = np.ones(2**18)
del del_first
big, small = [], []
for _ in range(100):
    big.append(np.ones(2**18))
    small.append(np.ones(64))
held = rss_mb()
del big
if mode == "trimmed":
    release_free_memory()
print(held - rss_mb())
"""


def _returned_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True, check=True,
                          timeout=120)
    return float(done.stdout.strip())


def test_freed_big_blocks_return_to_the_system_once_tuned() -> None:
    assert _returned_mb("tuned") > 150, "200 MiB freed: mapped blocks are unmapped"


def test_the_heap_keeps_them_untuned_until_trimmed() -> None:
    assert _returned_mb("untuned") < 50, "glibc's own threshold keeps the freed blocks in its heap"
    assert _returned_mb("trimmed") > 150, "malloc_trim hands the heap's free pages back"


def test_calls_are_harmless_in_this_process() -> None:
    assert tune_allocator() is True
    assert isinstance(release_free_memory(), bool)
