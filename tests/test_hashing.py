"""Hashes that stand for texts in ingest: stable, and duplicate detection bounded in memory by buckets on disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from s2s.hashing import HASH_DTYPE, NumberFile, as_hashes, first_occurrences, text_hashes


def test_text_hashes_are_stable_and_distinguish_pairs() -> None:
    hashes = as_hashes(text_hashes(["a b", "a b", "a\nb", "a\nb c", "a b\nc"]))
    assert hashes.dtype == HASH_DTYPE and len(hashes) == 5
    assert hashes[0] == hashes[1] and len(set(hashes[1:].tolist())) == 4
    # The same bytes in every process and on every machine (BLAKE2b, not Python's salted hash).
    assert text_hashes(["ein Hund"]) == hashlib.blake2b(b"ein Hund", digest_size=8).digest()


def reference_first(values: np.ndarray) -> np.ndarray:
    seen: set[int] = set()
    out = []
    for value in values.tolist():
        out.append(value not in seen)
        seen.add(value)
    return np.array(out)


def test_first_occurrences_in_buckets_on_disk_equal_one_pass_in_memory(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # 5,000 positions over 700 distinct hashes spread over the whole 64-bit range (every bucket gets some).
    distinct = rng.integers(0, 2**63, size=700, dtype=np.int64).astype(HASH_DTYPE) * np.uint64(2)
    values = distinct[rng.integers(0, 700, size=5000)]
    expected = reference_first(values)
    path = tmp_path / "h.u8"
    writer = NumberFile(path)
    writer.add_many(values.tobytes())
    stored = writer.close()
    for bucket_rows in (1 << 20, 1000, 300):  # one bucket in memory; 8 and 32 buckets on disk
        work = tmp_path / f"w{bucket_rows}"
        work.mkdir()
        first = first_occurrences(stored, work, bucket_rows=bucket_rows)
        assert first.tolist() == expected.tolist(), bucket_rows
        assert sorted(p.name for p in work.iterdir()) == ["first.bool"]  # the buckets are removed when done
    assert int(expected.sum()) == len(np.unique(values))


def test_first_occurrences_of_nothing(tmp_path: Path) -> None:
    writer = NumberFile(tmp_path / "empty.u8")
    assert len(first_occurrences(writer.close(), tmp_path)) == 0
