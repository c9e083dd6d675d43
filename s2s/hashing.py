"""Duplicate and membership tests over 64-bit text hashes, so that ingest never holds a corpus's texts.

A hash stands for a text (or a pair of texts): BLAKE2b cut to 8 bytes, the same on every machine and in every
process (Python's `hash` is salted per process). Two different texts share a hash with probability about
n^2 / 2^65: 2.7e-6 for ten million pairs, which ingest accepts (one pair wrongly taken for a duplicate).

Hashes are appended to files as they are computed; `first_occurrences` reads them in buckets of about
`bucket_rows` hashes (split by their leading bits, on disk; a hash repeated within a chunk of the file goes to its
bucket once), so its memory follows the bucket, not the corpus.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

HASH_DTYPE = np.dtype("<u8")
BUCKET_ROWS = 1 << 21  # 2 Mi hashes, ~60 MB of sorting at a time
CHUNK_ROWS = 1 << 18  # rows per read when scanning a whole file


def text_hashes(texts: list[str]) -> bytes:
    """Each text's 8-byte hash, laid end to end. A pair is hashed as its texts joined by a line break (ingest's
    cleaned texts hold none, so the join is unambiguous)."""
    blake2b = hashlib.blake2b
    return b"".join([blake2b(text.encode("utf-8"), digest_size=8).digest() for text in texts])


class NumberFile:
    """An append-only file of fixed-width little-endian numbers (hashes by default), mapped read-only when closed."""

    def __init__(self, path: Path, dtype: npt.DTypeLike = HASH_DTYPE) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self._handle: BinaryIO = path.open("wb")

    def add_many(self, values: bytes) -> None:
        """Numbers already in the file's layout (`text_hashes`, or an int64 `array`'s bytes on a little-endian CPU)."""
        self._handle.write(values)

    def close(self) -> np.ndarray:
        """Finish the file and map it read-only (an empty array when nothing was added)."""
        self._handle.close()
        return read_numbers(self.path, self.dtype)


def read_numbers(path: Path, dtype: npt.DTypeLike = HASH_DTYPE) -> np.ndarray:
    dtype = np.dtype(dtype)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def chunks(n: int, rows: int = CHUNK_ROWS) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(start + rows, n))


def first_occurrences(hashes: np.ndarray, work: Path, bucket_rows: int = BUCKET_ROWS) -> np.ndarray:
    """A bool array (on disk, under `work`): True where no earlier position holds the same hash."""
    n = len(hashes)
    first = np.memmap(work / "first.bool", dtype=np.bool_, mode="w+", shape=(max(n, 1),))[:n]
    if n == 0:
        return first
    bits = max(0, math.ceil(math.log2(n / bucket_rows))) if n > bucket_rows else 0
    if bits == 0:
        _mark_first(np.asarray(hashes), np.arange(n, dtype=np.int64), first)
        return first
    # Partition (hash, position) by the hash's leading bits: equal hashes land in the same bucket, in file order.
    paths = [(work / f"bucket-{k}.u8", work / f"bucket-{k}.i8") for k in range(1 << bits)]
    handles = [(h.open("wb"), p.open("wb")) for h, p in paths]
    try:
        for part in chunks(n, bucket_rows):
            # Each distinct hash of the chunk once, at its first position (the later ones cannot be first).
            values, where = np.unique(np.asarray(hashes[part]), return_index=True)
            bucket = (values >> np.uint64(64 - bits)).astype(np.int64)  # ascending, as `values` are
            bounds = np.searchsorted(bucket, np.arange((1 << bits) + 1))
            for k, (hash_out, pos_out) in enumerate(handles):
                hash_out.write(values[bounds[k] : bounds[k + 1]].tobytes())
                pos_out.write((where[bounds[k] : bounds[k + 1]] + part.start).astype("<i8").tobytes())
    finally:
        for hash_out, pos_out in handles:
            hash_out.close()
            pos_out.close()
    for hash_path, pos_path in paths:
        _mark_first(np.fromfile(hash_path, HASH_DTYPE), np.fromfile(pos_path, "<i8"), first)
        hash_path.unlink()
        pos_path.unlink()
    return first


def _mark_first(values: np.ndarray, positions: np.ndarray, first: np.ndarray) -> None:
    """Set `first` at the earliest position of each distinct value (`positions` ascending, one per value)."""
    if not len(values):
        return
    order = np.argsort(values, kind="stable")  # stable: among equal hashes, the earliest position comes first
    ordered = values[order]
    starts = np.ones(len(values), dtype=np.bool_)
    starts[1:] = ordered[1:] != ordered[:-1]
    first[positions[order[starts]]] = True


def as_hashes(values: bytes | bytearray) -> np.ndarray:
    """`text_hash` bytes laid end to end, as an array of hashes."""
    return np.frombuffer(bytes(values), dtype=HASH_DTYPE)
