"""Splits tokenized once, by the `encode` stage, into memory-mapped files that training reads without loading.

The layout is fairseq's MMapIndexedDataset, in plain numpy: per split and side, `{split}.{side}.bin` holds every
item's token ids back to back (uint16 while the vocabulary fits, else int32) and `{split}.{side}.idx` the int64
offsets of the items' starts (items + 1 of them; lengths are their differences). `meta.json` records the format,
the id dtype, the counts and each file's size and sha256, so a truncated or corrupt file is found before training
uses it. Why not Apache Arrow: both map the ids without copying, but a batch is a gather of a few dozen rows by
position, which is one slice of a numpy memmap per row and, in pyarrow, a `take` that builds new arrays plus a
conversion back to numpy (BENCHMARKS.md "Scaling" has the measurement); numpy is already there and needs no schema.

Ids are the tokenizer's, without BOS/EOS (s2s.batching adds those), and nothing is filtered: `train.max_tokens` and
truncation are training's choices, applied on the lengths alone, so changing them never re-encodes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from s2s.errors import S2SError
from s2s.layout import SIDES, SPLITS, iter_lines, prepared_file
from s2s.machine import cpu_count
from s2s.tokenizer import Tokenizers
from s2s.word_cache import WordCache

log = logging.getLogger(__name__)

FORMAT = 1
META_FILE = "meta.json"
CHUNK = 50_000  # items encoded per call: SentencePiece's threads get enough work, memory stays a few MB
IdArray = npt.NDArray[np.integer[Any]]


class EncodedDataError(S2SError, RuntimeError):
    """Encoded files that are missing, truncated or corrupt; the message names the file."""


def bin_file(directory: Path, split: str, side: str) -> Path:
    return directory / f"{split}.{side}.bin"


def idx_file(directory: Path, split: str, side: str) -> Path:
    return directory / f"{split}.{side}.idx"


def id_dtype(vocab_size: int) -> np.dtype[Any]:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _chunks(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode_side(tok: Tokenizers, prepared: Path, split: str, side: str, out: Path, dtype: np.dtype[Any], threads: int) -> int:
    """Stream one side of a split through SentencePiece (a word at a time, `WordCache`) into its .bin/.idx pair;
    returns the item count."""
    whole = tok.encode_src if side == "src" else tok.encode_tgt
    cache = WordCache(lambda texts: whole(texts, threads))
    items, end = 0, 0
    with bin_file(out, split, side).open("wb") as data, idx_file(out, split, side).open("wb") as index:
        np.zeros(1, dtype=np.int64).tofile(index)
        for chunk in _chunks(iter_lines(prepared_file(prepared, split, side)), CHUNK):
            ids, lengths = cache.encode(chunk)
            ids.astype(dtype).tofile(data)
            (end + np.cumsum(lengths)).tofile(index)
            items, end = items + len(chunk), end + int(lengths.sum())
    return items


def encode(tok: Tokenizers, prepared: Path, out_dir: Path, threads: int = 0) -> dict[str, Any]:
    """Encode every split of `prepared` into `out_dir` (replaced whole, atomically); returns what meta.json holds."""
    threads = threads or cpu_count()
    vocab = max(tok.src.get_piece_size(), tok.tgt.get_piece_size())
    dtype = id_dtype(vocab)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        splits: dict[str, dict[str, Any]] = {}
        for split in SPLITS:
            counts = {side: _encode_side(tok, prepared, split, side, tmp, dtype, threads) for side in SIDES}
            if counts["src"] != counts["tgt"]:
                raise EncodedDataError(f"{prepared_file(prepared, split, 'src')} has {counts['src']} lines but "
                                       f"{prepared_file(prepared, split, 'tgt')} has {counts['tgt']}")  # fmt: skip
            files = {path.name: {"bytes": path.stat().st_size, "sha256": _sha256(path)}
                     for side in SIDES for path in (bin_file(tmp, split, side), idx_file(tmp, split, side))}  # fmt: skip
            splits[split] = {"items": counts["src"], "files": files}
            log.info("encoded %s: %d items", split, counts["src"])
        meta = {"format": FORMAT, "dtype": dtype.name, "vocab_size": vocab, "splits": splits}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    try:
        meta: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise EncodedDataError(f"{path}: encoded data not found; run the encode stage first") from None
    except json.JSONDecodeError as err:
        raise EncodedDataError(f"{path}: not valid JSON ({err})") from None
    if meta.get("format") != FORMAT:
        raise EncodedDataError(f"{path}: format {meta.get('format')!r}, this s2s reads format {FORMAT}; rerun the encode stage")
    return meta


@dataclass(frozen=True)
class EncodedSide:
    """One side of a split, mapped: `ids[offsets[i]:offsets[i + 1]]` is item i."""

    ids: IdArray
    offsets: npt.NDArray[np.int64]

    @classmethod
    def from_lists(cls, items: list[list[int]]) -> EncodedSide:
        """The same layout in memory, for items tokenized on the spot."""
        offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in items], out=offsets[1:])
        return cls(np.fromiter((i for item in items for i in item), dtype=np.int64, count=int(offsets[-1])), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> npt.NDArray[np.int32]:
        lengths: npt.NDArray[np.int32] = np.diff(self.offsets).astype(np.int32)
        return lengths

    def item(self, i: int) -> IdArray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]


def open_split(directory: Path, split: str, verify: bool = True) -> tuple[EncodedSide, EncodedSide]:
    """The split's source and target sides, memory-mapped. Sizes are always checked against meta.json, contents by
    sha256 when `verify` (a read of the files, ~0.3 s per 100 MB); an error names the file that does not match."""
    meta = read_meta(directory)
    if split not in meta["splits"]:
        raise EncodedDataError(f"{directory / META_FILE}: no split {split!r}")
    info = meta["splits"][split]
    dtype = np.dtype(meta["dtype"])
    sides = []
    for side in SIDES:
        for path in (bin_file(directory, split, side), idx_file(directory, split, side)):
            expected = info["files"][path.name]
            if not path.is_file():
                raise EncodedDataError(f"{path}: missing; rerun the encode stage")
            if path.stat().st_size != expected["bytes"]:
                raise EncodedDataError(f"{path}: {path.stat().st_size} bytes, {expected['bytes']} expected (truncated?); "
                                       "rerun the encode stage")  # fmt: skip
            if verify and _sha256(path) != expected["sha256"]:
                raise EncodedDataError(f"{path}: contents do not match its sha256 in {META_FILE} (corrupt); "
                                       "rerun the encode stage")  # fmt: skip
        offsets = _map(idx_file(directory, split, side), np.dtype(np.int64))
        ids = _map(bin_file(directory, split, side), dtype, random_access=True)
        if len(offsets) != info["items"] + 1 or int(offsets[-1]) != len(ids):
            raise EncodedDataError(f"{idx_file(directory, split, side)}: offsets do not fit {bin_file(directory, split, side)}")
        sides.append(EncodedSide(ids, offsets))
    return sides[0], sides[1]


def _map(path: Path, dtype: np.dtype[Any], random_access: bool = False) -> npt.NDArray[Any]:
    """The file as a read-only array over a shared mapping. `random_access`: tell the kernel so (MADV_RANDOM): a
    batch reads a few dozen rows scattered over the file, and the default read-around would fault in 128 KB
    around each, which fills page cache and this process's resident set with rows no batch asked for."""
    if path.stat().st_size == 0:  # an empty file cannot be mapped
        return np.zeros(0, dtype=dtype)
    with path.open("rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    if random_access and hasattr(mmap, "MADV_RANDOM"):
        mapping.madvise(mmap.MADV_RANDOM)
    return np.frombuffer(mapping, dtype=dtype)  # the array holds the mapping open
