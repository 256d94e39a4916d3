"""A device's measured kernel latencies held compactly: what a loaded predictor looks kernels up in.

A table of 100k rows used to be kept as dicts of hex strings and of KernelKey objects (several KB per row,
see benchmarks/memory.py); here a row is 32 bytes of numpy arrays: the key hash's 16 bytes, the median,
and the key's Python hash, which answers most lookups of unmeasured keys without computing a key hash.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from predictor.kernels import KernelKey

__all__ = ["MeasuredTable", "key_python_hashes"]

_DIGEST_BYTES = 16


def _digest(key_hash: str) -> bytes | None:
    """The 16 bytes of a 32-hex-digit key hash (as KernelKey.key_hash writes it); None for any other string."""
    if len(key_hash) != 2 * _DIGEST_BYTES:
        return None
    try:
        digest = bytes.fromhex(key_hash)
    except ValueError:
        return None
    # Upper-case digits would name the same bytes as another key hash: such a string stays as it is.
    return digest if digest.hex() == key_hash else None


class MeasuredTable(Mapping[str, float]):
    """Measured median (ms) per key hash; read-only, sorted numpy arrays instead of per-row Python objects.

    `lookup_many` finds KernelKeys: a key whose Python hash is not among the measured keys' hashes is not
    measured (equal keys hash alike), so only the few others pay for `key_hash` (JSON and sha256). Tables
    built without them (`from_medians` without `python_hashes`) compute the key hash of every key asked.
    """

    def __init__(self, digests: np.ndarray, medians: np.ndarray, others: Mapping[str, float],
                 python_hashes: np.ndarray | None) -> None:
        order = np.argsort(digests, kind="stable")
        self._digests = digests[order]
        self._medians = medians[order]
        # Key hashes that are not 32 hex digits (hand-written tables): never a KernelKey's, kept as they are.
        self._others = dict(others)
        self._python_hashes = None if python_hashes is None else np.sort(python_hashes)

    @classmethod
    def from_medians(cls, medians: Mapping[str, float], python_hashes: np.ndarray | None = None) -> MeasuredTable:
        """A table of `medians` (key hash -> ms).

        `python_hashes`, Python's hash of each measured KernelKey (`key_python_hashes`), make lookups of
        unmeasured keys cheap; they must come from this process (str hashes differ between processes).
        """
        digests: list[bytes] = []
        values: list[float] = []
        others: dict[str, float] = {}
        for key_hash, median in medians.items():
            digest = _digest(key_hash)
            if digest is None:
                others[key_hash] = float(median)
            else:
                digests.append(digest)
                values.append(float(median))
        return cls(np.array(digests, dtype=f"S{_DIGEST_BYTES}"), np.array(values, dtype=np.float64), others,
                   python_hashes)

    @classmethod
    def from_keys(cls, measured: Mapping[KernelKey, float]) -> MeasuredTable:
        """A table of measured keys and their medians (ms)."""
        return cls.from_medians({key.key_hash: ms for key, ms in measured.items()}, key_python_hashes(measured))

    def __getitem__(self, key_hash: str) -> float:
        digest = _digest(key_hash) if isinstance(key_hash, str) else None
        if digest is None:
            return self._others[key_hash]
        # Compared as S16 arrays: a numpy element drops its trailing zero bytes, a Python bytes object does not.
        asked = np.array([digest], dtype=f"S{_DIGEST_BYTES}")
        index = int(np.searchsorted(self._digests, asked)[0])
        if index < len(self._digests) and self._digests[index:index + 1] == asked:
            return float(self._medians[index])
        raise KeyError(key_hash)

    def __len__(self) -> int:
        return len(self._digests) + len(self._others)

    def __iter__(self) -> Iterator[str]:
        # numpy drops trailing zero bytes of an S16 element: pad them back.
        for digest in self._digests:
            yield bytes(digest).ljust(_DIGEST_BYTES, b"\0").hex()
        yield from self._others

    def lookup_many(self, keys: Sequence[KernelKey]) -> list[float | None]:
        """The measured median of each key (looked up by its key hash), None where it was not measured."""
        found: list[float | None] = [None] * len(keys)
        candidates: Sequence[int] = range(len(keys))
        if self._python_hashes is not None:
            if not len(self._python_hashes):
                return found
            hashes = key_python_hashes(keys)
            positions = np.minimum(np.searchsorted(self._python_hashes, hashes), len(self._python_hashes) - 1)
            candidates = np.flatnonzero(self._python_hashes[positions] == hashes).tolist()
        if not candidates:
            return found
        key_hashes = [keys[i].key_hash for i in candidates]
        if self._others:
            for i, key_hash in zip(candidates, key_hashes, strict=True):
                found[i] = self._others.get(key_hash)
        if not len(self._digests):
            return found
        asked = np.array([bytes.fromhex(key_hash) for key_hash in key_hashes], dtype=f"S{_DIGEST_BYTES}")
        positions = np.minimum(np.searchsorted(self._digests, asked), len(self._digests) - 1)
        for i, position, hit in zip(candidates, positions.tolist(), (self._digests[positions] == asked).tolist(),
                                    strict=True):
            if hit:
                found[i] = float(self._medians[position])
        return found


def key_python_hashes(keys: Iterable[KernelKey]) -> np.ndarray:
    """Python's hash of each key (int64): equal within a process for equal keys, so a cheap pre-check."""
    return np.fromiter((hash(key) for key in keys), dtype=np.int64)
