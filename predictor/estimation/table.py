"""A device's measured kernel latencies held compactly: what a loaded predictor looks kernels up in.

A table of 100k rows used to be kept as dicts of hex strings and of KernelKey objects (several KB per row,
see docs/history/results/memory.json); here a row is a few numpy array cells: the key hash's 16 bytes and the median.
A table loaded from the store is looked up by key hash only: building it parses no key (a lookup computes the
asked key's hash, which a loaded predictor memoizes). Tables built from KernelKeys in code may also keep each
key's Python hash, which answers most lookups of unmeasured keys without computing a key hash.

`MeasuredRows` is what a table is built from: the device's measured kernels (median of their runs' medians, bytes
moved and MACs) as sorted arrays, which new rows are merged into without reading the others again.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from predictor.kernels.keys import KernelKey

__all__ = ["DIGEST_DTYPE", "MeasuredRows", "MeasuredTable", "digest_of", "key_python_hashes"]

_DIGEST_BYTES = 16
DIGEST_DTYPE = f"S{_DIGEST_BYTES}"


def digest_of(key_hash: str) -> bytes | None:
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
                 python_hashes: np.ndarray | None, presorted: bool = False) -> None:
        if presorted:
            self._digests, self._medians = digests, medians
        else:
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
            digest = digest_of(key_hash)
            if digest is None:
                others[key_hash] = float(median)
            else:
                digests.append(digest)
                values.append(float(median))
        return cls(np.array(digests, dtype=DIGEST_DTYPE), np.array(values, dtype=np.float64), others,
                   python_hashes)

    @classmethod
    def from_rows(cls, rows: MeasuredRows, medians: np.ndarray) -> MeasuredTable:
        """A table of the rows' key hashes with `medians` (one per row, in `rows.all_*` order): no key is parsed."""
        digest_count = len(rows.digests)
        others = dict(zip(rows.other_hashes, medians[digest_count:].tolist(), strict=True))
        return cls(rows.digests, np.ascontiguousarray(medians[:digest_count], dtype=np.float64), others, None,
                   presorted=True)

    @classmethod
    def from_keys(cls, measured: Mapping[KernelKey, float]) -> MeasuredTable:
        """A table of measured keys and their medians (ms)."""
        return cls.from_medians({key.key_hash: ms for key, ms in measured.items()}, key_python_hashes(measured))

    def __getitem__(self, key_hash: str) -> float:
        digest = digest_of(key_hash) if isinstance(key_hash, str) else None
        if digest is None:
            return self._others[key_hash]
        # Compared as S16 arrays: a numpy element drops its trailing zero bytes, a Python bytes object does not.
        asked = np.array([digest], dtype=DIGEST_DTYPE)
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
        asked = np.array([bytes.fromhex(key_hash) for key_hash in key_hashes], dtype=DIGEST_DTYPE)
        positions = np.minimum(np.searchsorted(self._digests, asked), len(self._digests) - 1)
        for i, position, hit in zip(candidates, positions.tolist(), (self._digests[positions] == asked).tolist(),
                                    strict=True):
            if hit:
                found[i] = float(self._medians[position])
        return found


def key_python_hashes(keys: Iterable[KernelKey]) -> np.ndarray:
    """Python's hash of each key (int64): equal within a process for equal keys, so a cheap pre-check."""
    return np.fromiter((hash(key) for key in keys), dtype=np.int64)


def _empty_floats() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


@dataclass(frozen=True)
class MeasuredRows:
    """A device's measured kernels as arrays sorted by key-hash digest (one row per key).

    `medians` are the medians of each key's run medians (ms), `bytes_moved` and `macs` its work (NaN where the
    store has no summary of the key). Key hashes that are not 32 lowercase hex digits (hand-written tables) are
    kept apart in `other_*`, in no order. Arrays are never changed in place: `merged` returns new ones.
    """

    digests: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=DIGEST_DTYPE))
    medians: np.ndarray = field(default_factory=_empty_floats)
    bytes_moved: np.ndarray = field(default_factory=_empty_floats)
    macs: np.ndarray = field(default_factory=_empty_floats)
    other_hashes: tuple[str, ...] = ()
    other_medians: np.ndarray = field(default_factory=_empty_floats)
    other_bytes_moved: np.ndarray = field(default_factory=_empty_floats)
    other_macs: np.ndarray = field(default_factory=_empty_floats)

    @classmethod
    def from_arrays(cls, digests: np.ndarray, medians: np.ndarray, bytes_moved: np.ndarray, macs: np.ndarray,
                    others: Mapping[str, tuple[float, float, float]] | None = None,
                    presorted: bool = False) -> MeasuredRows:
        """Rows of arrays (digests unique) and of other key hashes (-> (median, bytes moved, MACs)).

        `presorted`: the digests are in order already, so the arrays are kept, not copied (checked: rows out of
        order are sorted all the same).
        """
        digests = np.asarray(digests, dtype=DIGEST_DTYPE)
        columns = [np.asarray(values, dtype=np.float64) for values in (medians, bytes_moved, macs)]
        if not (presorted and bool(np.all(digests[1:] > digests[:-1]))):
            order = np.argsort(digests, kind="stable")
            digests, columns = digests[order], [values[order] for values in columns]
        other_values = np.array(list((others or {}).values()), dtype=np.float64).reshape(-1, 3)
        return cls(digests=digests, medians=columns[0], bytes_moved=columns[1], macs=columns[2],
                   other_hashes=tuple(others or ()), other_medians=other_values[:, 0].copy(),
                   other_bytes_moved=other_values[:, 1].copy(), other_macs=other_values[:, 2].copy())

    def __len__(self) -> int:
        return len(self.digests) + len(self.other_hashes)

    @property
    def all_medians(self) -> np.ndarray:
        """Medians of every row: the digests' in their order, then the other key hashes'."""
        return np.concatenate([self.medians, self.other_medians])

    @property
    def all_bytes_moved(self) -> np.ndarray:
        return np.concatenate([self.bytes_moved, self.other_bytes_moved])

    @property
    def all_macs(self) -> np.ndarray:
        return np.concatenate([self.macs, self.other_macs])

    def positions(self, key_hashes: Sequence[str]) -> list[int | None]:
        """Each key hash's row in `all_*` order, None where it is not measured."""
        found: list[int | None] = [None] * len(key_hashes)
        others = {key_hash: len(self.digests) + index for index, key_hash in enumerate(self.other_hashes)}
        asked: list[tuple[int, bytes]] = []
        for index, key_hash in enumerate(key_hashes):
            digest = digest_of(key_hash)
            if digest is None:
                found[index] = others.get(key_hash)
            else:
                asked.append((index, digest))
        if asked and len(self.digests):
            wanted = np.array([digest for _, digest in asked], dtype=DIGEST_DTYPE)
            places = np.minimum(np.searchsorted(self.digests, wanted), len(self.digests) - 1)
            hits = (self.digests[places] == wanted).tolist()
            for (index, _), place, hit in zip(asked, places.tolist(), hits, strict=True):
                if hit:
                    found[index] = place
        return found

    def merged(self, newer: MeasuredRows) -> MeasuredRows:
        """These rows with `newer`'s: a key in both takes newer's values, new keys are inserted in order."""
        if not len(newer):
            return self
        digests, medians, bytes_moved, macs = self.digests, self.medians, self.bytes_moved, self.macs
        if len(newer.digests):
            places = np.searchsorted(digests, newer.digests)
            inside = places < len(digests)
            hit = np.zeros(len(places), dtype=bool)
            hit[inside] = digests[places[inside]] == newer.digests[inside]
            medians, bytes_moved, macs = medians.copy(), bytes_moved.copy(), macs.copy()
            medians[places[hit]] = newer.medians[hit]
            bytes_moved[places[hit]] = newer.bytes_moved[hit]
            macs[places[hit]] = newer.macs[hit]
            new = ~hit
            digests = np.insert(digests, places[new], newer.digests[new])
            medians = np.insert(medians, places[new], newer.medians[new])
            bytes_moved = np.insert(bytes_moved, places[new], newer.bytes_moved[new])
            macs = np.insert(macs, places[new], newer.macs[new])
        others = {key_hash: (median, moved, work) for key_hash, median, moved, work in zip(
            self.other_hashes, self.other_medians.tolist(), self.other_bytes_moved.tolist(), self.other_macs.tolist(),
            strict=True)}
        others.update({key_hash: (median, moved, work) for key_hash, median, moved, work in zip(
            newer.other_hashes, newer.other_medians.tolist(), newer.other_bytes_moved.tolist(),
            newer.other_macs.tolist(), strict=True)})
        other_values = np.array(list(others.values()), dtype=np.float64).reshape(-1, 3)
        return MeasuredRows(digests=digests, medians=medians, bytes_moved=bytes_moved, macs=macs,
                            other_hashes=tuple(others), other_medians=other_values[:, 0].copy(),
                            other_bytes_moved=other_values[:, 1].copy(), other_macs=other_values[:, 2].copy())
