"""Ingest: parallel text in, cleaned train/valid/test splits and per-reason counts out.

Every input line ends up kept, dropped under exactly one named reason, or moved
to a held-out split, so `kept + sum(dropped) + sum(moved) == read` holds for
every split read from input; lines that are kept but changed are counted under
`cleaned`. Nothing is dropped silently.
"""

from __future__ import annotations

import bisect
import csv
import gzip
import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain, islice, zip_longest
from multiprocessing import get_context
from multiprocessing.pool import AsyncResult
from pathlib import Path

import numpy as np

from s2s.config import CleanConfig, DocumentFields, IngestConfig, Location, SplitSource
from s2s.corpus import generate_pairs
from s2s.errors import S2SError
from s2s.hashing import NumberFile, as_hashes, chunks, first_occurrences, text_hashes
from s2s.layout import (
    DOWNLOADS_DIR,
    RAW_DIR,
    SIDES,
    SPLITS,
    Example,
    PreparedWriter,
    join_lines,
    prepared_file,
    read_examples,
    staged_dir,
    write_newline,
)
from s2s.machine import cpu_count

log = logging.getLogger(__name__)

# C0/C1 control characters except tab; NUL included. Tabs are allowed only inside
# sentences read from two-file corpora (a TSV line's tab is its column separator).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# The clean rule a drop reason comes from: the key to change when ingest keeps too little.
REASON_KEYS = {
    "too_long": "ingest.clean.max_words", "length_ratio": "ingest.clean.max_ratio", "duplicate": "ingest.clean.dedup",
    "leak": "ingest.clean.drop_leaks",
}  # fmt: skip


EXAMPLES = 20


class IngestError(S2SError, RuntimeError):
    """Input that cannot become a corpus; the message names the file (and line)."""


@dataclass
class SplitStats:
    read: int = 0
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    cleaned: Counter[str] = field(default_factory=Counter)
    # Pairs held out of this split into another (train -> valid/test): neither kept nor dropped.
    moved: Counter[str] = field(default_factory=Counter)
    # The first few (file, line, reason) examples in read order, so a user can look at them.
    examples: list[str] = field(default_factory=list)
    _keys: list[int] = field(default_factory=list, repr=False)  # the examples' read ordinals, ascending

    def drop(self, reason: str, where: str, key: int) -> None:
        self.dropped[reason] += 1
        self.note(reason, where, key)

    def note(self, reason: str, where: str, key: int) -> None:
        """Keep an example if it is among the first EXAMPLES in read order (`key`: its ordinal); rules that run over
        the whole corpus (duplicates) find theirs after the per-item rules found theirs."""
        if len(self._keys) >= EXAMPLES and key >= self._keys[-1]:
            return
        at = bisect.bisect(self._keys, key)
        self._keys.insert(at, key)
        self.examples.insert(at, f"{where}: {reason}")
        del self._keys[EXAMPLES:], self.examples[EXAMPLES:]

    def to_dict(self) -> dict[str, object]:
        return {
            "read": self.read,
            "kept": self.kept,
            "dropped": dict(sorted(self.dropped.items())),
            "dropped_total": sum(self.dropped.values()),
            "cleaned": dict(sorted(self.cleaned.items())),
            "moved": dict(sorted(self.moved.items())),
            "examples": self.examples,
        }


# ---------------------------------------------------------------------------- fetch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(location: Location, workspace: Path, download_dir: Path, timeout: float = 60.0) -> Path:
    """Resolve a local path or download a URL; verify the sha256 when one is given.

    A download goes to a temporary file first and is renamed into place only
    after its checksum matched, so a bad or partial download is never mistaken
    for a good file on the next run.
    """
    if not location.is_url:
        path = Path(location.path)
        path = path if path.is_absolute() else workspace / path
        if not path.is_file():
            # Named as params.yaml names it; the folder it was looked in only when that is not the workspace.
            where = "" if path.parent.resolve().is_relative_to(workspace.resolve()) else f" (looked in {path.parent})"
            raise IngestError(f"{location.path}: input file not found{where}")
        _check_sha(path, location)
        return path

    name = location.path.rstrip("/").rsplit("/", 1)[-1] or "download"
    key = (location.sha256 or hashlib.sha256(location.path.encode()).hexdigest())[:16]
    target = download_dir / f"{key}-{name}"
    if target.is_file() and (location.sha256 is None or sha256_file(target) == location.sha256.lower()):
        log.info("using cached download %s", target)
        return target
    download_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=download_dir, prefix=".part-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(location.path, timeout=timeout) as response:
            shutil.copyfileobj(response, out)
        _check_sha(tmp, location)
        tmp.replace(target)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise IngestError(f"{location.path}: download failed: {err}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("downloaded %s -> %s", location.path, target)
    return target


def _check_sha(path: Path, location: Location) -> None:
    if location.sha256 is None:
        return
    actual = sha256_file(path)
    if actual != location.sha256.lower():
        raise IngestError(f"{location.path}: sha256 mismatch: expected {location.sha256.lower()}, got {actual}")


# ----------------------------------------------------------------------------- read

# A source's items as read: (ordinal, texts, id), texts being the source, the target and then the references.
# Text files give bytes (decoded per line, so one bad line cannot sink the file); documents give str.
Item = tuple[int, tuple[bytes | str, ...], str]


@dataclass(frozen=True)
class Source:
    """A split's items, read as they are asked for, and where an ordinal came from (for messages)."""

    items: Iterator[Item]
    where: Callable[[int], str]


READ_BLOCK = 1 << 22  # bytes read at a time


def raw_lines(path: Path, universal: bool = False) -> Iterator[bytes]:
    """A (gzipped) text file's lines as bytes, read as needed: "\n" ends a line, and a "\r" before it goes too.
    `universal`: lines end at "\n", "\r" or "\r\n" and keep their ends, as a CSV reader wants them."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "rb")
    except OSError as err:
        raise IngestError(f"{path}: cannot read: {err}") from None
    return _lines(handle, path, universal)


def _lines(handle: gzip.GzipFile | io.BufferedReader, path: Path, universal: bool) -> Iterator[bytes]:
    # Read in blocks and split: a third of the time of iterating the file line by line.
    rest = b""
    with handle:
        try:
            while block := handle.read(READ_BLOCK):
                data = rest + block
                if universal:
                    lines = data.splitlines(keepends=True)
                    # A last line without its end, or ending in "\r" (maybe half of "\r\n"), waits for the next block.
                    rest = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
                else:
                    lines = data.split(b"\n")
                    rest = lines.pop()
                    if b"\r" in data:
                        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
                yield from lines
        except (OSError, EOFError, zlib.error) as err:
            raise IngestError(f"{path}: cannot read: {err}") from None
    if rest:
        yield rest if universal or not rest.endswith(b"\r") else rest[:-1]


def read_split(
    source: SplitSource,
    workspace: Path,
    download_dir: Path,
    stats: SplitStats,
    fields: DocumentFields | None = None,
    references: bool = False,
) -> Source:
    """A split's items; `references`: read the reference fields too (valid and test). Counts `read` as it goes."""
    document = source.document
    if document is not None:
        kind, location = document
        assert fields is not None  # guaranteed by FilesSource
        path = fetch(location, workspace, download_dir)
        return Source(read_documents(path, kind, fields, references, stats), lambda n: f"{path}:{n}")
    if source.tsv is not None:
        path = fetch(source.tsv, workspace, download_dir)
        return Source(_tsv(path, stats), lambda n: f"{path}:{n}")
    assert source.src is not None and source.tgt is not None  # guaranteed by SplitSource
    src_path = fetch(source.src, workspace, download_dir)
    tgt_path = fetch(source.tgt, workspace, download_dir)
    return Source(_parallel(src_path, tgt_path, stats), lambda n: f"{src_path}:{n} / {tgt_path}:{n}")


def _tsv(path: Path, stats: SplitStats) -> Iterator[Item]:
    for number, line in enumerate(raw_lines(path), start=1):
        stats.read += 1
        columns = line.split(b"\t")
        if len(columns) != 2:
            stats.drop("tsv_columns", f"{path}:{number}", number)
            continue
        yield number, (columns[0], columns[1]), ""


def _parallel(src_path: Path, tgt_path: Path, stats: SplitStats) -> Iterator[Item]:
    src, tgt = raw_lines(src_path), raw_lines(tgt_path)
    for number, (s, t) in enumerate(zip_longest(src, tgt), start=1):
        if s is None or t is None:
            # Counted to the end, so the message says how far apart the files are.
            n_src = number - 1 + (s is not None) + sum(1 for _ in src)
            n_tgt = number - 1 + (t is not None) + sum(1 for _ in tgt)
            raise IngestError(f"parallel files differ in line count: {src_path} has {n_src} lines, {tgt_path} has {n_tgt} lines")
        stats.read += 1
        yield number, (s, t), ""


def _decoded(path: Path, universal: bool = False) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(raw_lines(path, universal), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError:
            raise IngestError(f"{path}:{number}: not valid UTF-8") from None


def _records(path: Path, kind: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed record) of a JSON Lines or CSV file, read as needed; one that does not parse is an error."""
    if kind == "csv":
        reader = csv.DictReader((line for _, line in _decoded(path, universal=True)), strict=True)
        try:
            reader.fieldnames  # noqa: B018 -- reads the header row, so that line_num counts from the first record
            start = reader.line_num + 1
            for record in reader:
                yield start, record
                start = reader.line_num + 1
        except csv.Error as err:
            raise IngestError(f"{path}:{reader.line_num}: not valid CSV: {err}") from None
        return
    for number, line_text in _decoded(path):
        if not line_text.strip():
            continue
        try:
            record = json.loads(line_text)
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})") from None
        yield number, record


def read_documents(path: Path, kind: str, fields: DocumentFields, references: bool, stats: SplitStats) -> Iterator[Item]:
    """Items of a JSON Lines or CSV file; a missing or non-string field is an error naming file, line and field."""
    names = [fields.source, fields.target, *(fields.references if references else ()), *([fields.id] if fields.id else [])]
    n_texts = len(names) - bool(fields.id)
    for number, record in _records(path, kind):
        where = f"{path}:{number}"
        if not isinstance(record, dict):
            raise IngestError(f"{where}: expected an object with fields {', '.join(names)}, got {type(record).__name__}")
        for name in names:
            value = record.get(name)
            if value is None:
                raise IngestError(f"{where}: field {name!r} is missing (fields: {', '.join(map(str, record)) or 'none'})")
            if not isinstance(value, str):
                raise IngestError(f"{where}: field {name!r} is a {type(value).__name__}, expected a string")
        stats.read += 1
        texts = tuple(join_lines(record[name], fields.newline) for name in names[:n_texts])
        yield number, texts, str(record[fields.id]).strip() if fields.id else ""


# ---------------------------------------------------------------------------- clean


def _words(texts: tuple[bytes | str, ...], cleaned: Counter[str]) -> list[list[str]] | str:
    """Each text's words once decoded (whitespace-normalised, so " ".join gives the cleaned text), or the reason the
    item must go. str.split() splits at the characters str.isspace() names, which is what the regex \\s matches."""
    out: list[list[str]] = []
    for raw in texts:
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            return "invalid_utf8"
        if _CONTROL.search(text):
            return "control_chars"
        words = text.split()
        if not words:
            return "empty"
        if " ".join(words) != text:
            cleaned["whitespace"] += 1
        out.append(words)
    return out


def _filtered(n_src: int, n_tgt: int, cfg: CleanConfig) -> str | None:
    """The first length rule the (truncated) training item fails, or None."""
    longer, shorter = max(n_src, n_tgt), min(n_src, n_tgt)
    if cfg.max_words is not None and longer > cfg.max_words:
        return "too_long"
    if cfg.max_ratio is not None and longer >= cfg.min_ratio_words and longer > cfg.max_ratio * shorter:
        return "length_ratio"
    return None


@dataclass
class Candidates:
    """Training items that passed the per-item rules, on disk in read order, with the hashes the corpus-wide rules
    (duplicates, leaks) need and the ordinal each came from (for examples)."""

    directory: Path
    ids: bool
    pair_hashes: np.ndarray
    src_hashes: np.ndarray
    ordinals: np.ndarray

    def __len__(self) -> int:
        return len(self.ordinals)

    def sides(self) -> list[str]:
        """The columns written (an id column that stayed empty was not kept)."""
        return [side for side in (*SIDES, "id") if prepared_file(self.directory, CANDIDATES, side).is_file()]


CANDIDATES = "candidates"
BATCH = 8192  # items per batch a worker cleans
BATCH_BYTES = 4 << 20  # ... or fewer: at most 2 batches per worker in flight, so a few tens of MB whatever the items


@dataclass
class Cleaned:
    """A batch of training items through the per-item rules (`clean_batch`): what a worker hands back."""

    rows: list[tuple[str, ...]]  # (src, tgt[, id]) of the items that passed
    numbers: bytes  # their ordinals, int64
    pair_hashes: bytes
    src_hashes: bytes
    drops: list[tuple[str, int]]  # (reason, ordinal) of the items that did not
    cleaned: Counter[str]


def clean_batch(items: list[Item], cfg: CleanConfig, ids: bool) -> Cleaned:
    """Apply the per-item rules in order (the first that fails names the reason): unusable lines (invalid UTF-8,
    control characters, empty) go; long sources are cut; the length filters apply. Pure, so workers can run it."""
    rows: list[tuple[str, ...]] = []
    numbers = array("q")
    drops: list[tuple[str, int]] = []
    cleaned: Counter[str] = Counter()
    for number, texts, item_id in items:
        words = _words(texts, cleaned)
        if isinstance(words, str):
            drops.append((words, number))
            continue
        src_words, tgt_words = words[0], words[1]
        if cfg.max_source_words is not None and len(src_words) > cfg.max_source_words:
            src_words = src_words[: cfg.max_source_words]
            cleaned["truncated"] += 1
        reason = _filtered(len(src_words), len(tgt_words), cfg)
        if reason is not None:
            drops.append((reason, number))
            continue
        src, tgt = " ".join(src_words), " ".join(tgt_words)
        rows.append((src, tgt, item_id) if ids else (src, tgt))
        numbers.append(number)
    pair_hashes = text_hashes([f"{row[0]}\n{row[1]}" for row in rows])
    return Cleaned(rows, numbers.tobytes(), pair_hashes, text_hashes([row[0] for row in rows]), drops, cleaned)


def stage_candidates(source: Source, stats: SplitStats, cfg: CleanConfig, work: Path, ids: bool, workers: int = 0) -> Candidates:
    """The training items that pass the per-item rules, written to `work` in read order with their hashes.
    `workers`: processes that clean batches while this one reads and writes (0: one per CPU, at most 4)."""
    pairs, sources = NumberFile(work / "pair.u8"), NumberFile(work / "src.u8")
    ordinals = NumberFile(work / "ordinal.i8", "<i8")
    with PreparedWriter(work, CANDIDATES, ids=ids) as writer:
        for batch in _cleaned(source.items, cfg, ids, workers or min(cpu_count(), 4)):
            writer.write_many(batch.rows)
            pairs.add_many(batch.pair_hashes)
            sources.add_many(batch.src_hashes)
            ordinals.add_many(batch.numbers)
            for reason, number in batch.drops:
                stats.drop(reason, source.where(number), number)
            stats.cleaned.update(batch.cleaned)
    return Candidates(work, ids, pairs.close(), sources.close(), ordinals.close())


def _batches(items: Iterator[Item]) -> Iterator[list[Item]]:
    """Training items in batches of BATCH, or fewer once they hold BATCH_BYTES of text (documents are long)."""
    batch: list[Item] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[1][0]) + len(item[1][1])
        if len(batch) == BATCH or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _cleaned(items: Iterator[Item], cfg: CleanConfig, ids: bool, workers: int) -> Iterator[Cleaned]:
    """`clean_batch` over batches of the items, in order; in worker processes once there is more than one batch
    (forked: no re-import, and no main-module guard asked of a caller). At most two batches per worker are in
    flight, so memory stays flat."""
    batches = _batches(items)
    head = list(islice(batches, 2))
    if len(head) < 2 or workers < 2:
        yield from (clean_batch(batch, cfg, ids) for batch in chain(head, batches))
        return
    with get_context("fork").Pool(workers) as pool:
        pending: deque[AsyncResult[Cleaned]] = deque()
        for batch in chain(head, batches):
            pending.append(pool.apply_async(clean_batch, (batch, cfg, ids)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def copy_given(source: Source, stats: SplitStats, writer: PreparedWriter, ids: bool) -> bytearray:
    """A given valid or test set, kept as published apart from unusable lines; returns its sources' hashes."""
    hashes = bytearray()
    for number, texts, item_id in source.items:
        words = _words(texts, stats.cleaned)
        if isinstance(words, str):
            stats.drop(words, source.where(number), number)
            continue
        cleaned = [" ".join(w) for w in words]
        writer.write((*cleaned, item_id) if ids else cleaned)
        hashes += text_hashes([cleaned[0]])
    return hashes


# ----------------------------------------------------------------------------- route

# Where each candidate goes: one byte per candidate, on disk.
TRAIN, DUPLICATE, LEAK = 0, 1, 2
HELD_OUT = {"valid": 3, "test": 4}


def route(
    candidates: Candidates, cfg: IngestConfig, carve: list[str], held_out_sources: np.ndarray, stats: SplitStats
) -> np.ndarray:
    """Each candidate's destination: duplicates out, `carve`'s held-out splits drawn at random from what is left
    (test first), then training items whose source is a held-out source out as leaks. Counts into `stats`."""
    n = len(candidates)
    dest = np.memmap(candidates.directory / "dest.u1", dtype=np.uint8, mode="w+", shape=(max(n, 1),))[:n]
    if cfg.clean.dedup:
        first = first_occurrences(candidates.pair_hashes, candidates.directory)
        duplicates = 0
        for part in chunks(n):
            dest[part] = np.where(first[part], TRAIN, DUPLICATE)
            duplicates += len(first[part]) - int(np.count_nonzero(first[part]))
        if duplicates:
            stats.dropped["duplicate"] += duplicates
    remaining = n - stats.dropped["duplicate"]
    sizes = [getattr(cfg.holdout, split) for split in carve]
    for split, size in zip(carve, sizes, strict=True):
        if remaining <= size:
            raise IngestError(f"cannot hold out {size} {split} pairs: train has only {remaining} after cleaning")
        remaining -= size
        stats.moved[split] += size
    # Ranks among the items left after dedup, drawn without materialising a list of every item.
    ranks = random.Random(cfg.seed).sample(range(n - stats.dropped["duplicate"]), sum(sizes))
    codes = np.repeat([HELD_OUT[s] for s in carve], sizes).astype(np.uint8)
    positions = _positions_of_ranks(dest, np.asarray(ranks, dtype=np.int64))
    dest[positions] = codes
    if cfg.clean.drop_leaks:
        leaks = np.unique(np.concatenate([held_out_sources, candidates.src_hashes[positions]]))
        stats.dropped["leak"] += 0  # counted even when none: drop_leaks was on
        for part in chunks(n):
            block = dest[part]
            leaked = (block == TRAIN) & np.isin(candidates.src_hashes[part], leaks)
            block[leaked] = LEAK
            stats.dropped["leak"] += int(np.count_nonzero(leaked))
    return dest


def _positions_of_ranks(dest: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """The positions of the `ranks`-th TRAIN entries of `dest` (in the ranks' order), one chunk at a time."""
    positions = np.zeros(len(ranks), dtype=np.int64)
    seen = 0
    for part in chunks(len(dest)):
        train = np.flatnonzero(dest[part] == TRAIN)
        inside = (ranks >= seen) & (ranks < seen + len(train))
        positions[inside] = train[ranks[inside] - seen] + part.start
        seen += len(train)
    return positions


def note_examples(dest: np.ndarray, code: int, reason: str, candidates: Candidates, source: Source, stats: SplitStats) -> None:
    """Note the first few candidates routed to `code` as examples of `reason`."""
    for part in chunks(len(dest)):
        hits = np.flatnonzero(dest[part] == code)[:EXAMPLES]
        for ordinal in candidates.ordinals[hits + part.start].tolist():
            stats.note(reason, source.where(ordinal), ordinal)


# ----------------------------------------------------------------------------- main


def stream_splits(
    cfg: IngestConfig, workspace: Path, download_dir: Path, out_dir: Path, workers: int = 0
) -> dict[str, SplitStats]:
    """Read, clean and split the configured corpus into `out_dir` (prepared files, written as they are read);
    `workers`: as `stage_candidates` takes it.

    Memory does not grow with the corpus: items are streamed, and the corpus-wide rules (duplicates, leaks, the
    random held-out draw) work on hashes and one byte per item, on disk beside the candidates.
    """
    stats = {split: SplitStats() for split in SPLITS}
    files = cfg.files if cfg.corpus == "files" else None
    held_out_sources = bytearray()
    given: list[str] = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".work-") as work_dir:
        work = Path(work_dir)
        train = _train_source(cfg, workspace, download_dir, stats["train"])
        ids = files is not None and _columns(files.train, files.fields)[1]
        candidates = stage_candidates(train, stats["train"], cfg.clean, work, ids, workers)
        for split in ("valid", "test"):
            source = getattr(files, split) if files is not None else None
            if source is None:
                continue
            assert files is not None
            read = read_split(source, workspace, download_dir, stats[split], files.fields, references=True)
            n_refs, has_ids = _columns(source, files.fields)
            with PreparedWriter(out_dir, split, n_refs, has_ids) as writer:
                held_out_sources += copy_given(read, stats[split], writer, has_ids)
            stats[split].kept = writer.count
            given.append(split)
        carve = [split for split in ("test", "valid") if split not in given]
        dest = route(candidates, cfg, carve, as_hashes(held_out_sources), stats["train"])
        note_examples(dest, DUPLICATE, "duplicate", candidates, train, stats["train"])
        _write_routed(candidates, dest, carve, out_dir, stats)
    for split in SPLITS:
        if not stats[split].kept:
            raise IngestError(f"the {split} split is empty after cleaning: {stats[split].to_dict()['dropped']}")
        check_kept(split, stats[split], cfg.clean.min_kept)
    return stats


def _columns(source: SplitSource, fields: DocumentFields | None) -> tuple[int, bool]:
    """The references and whether an id column a split's items bring: only documents name fields for them."""
    if source.document is None or fields is None:
        return 0, False
    return len(fields.references), bool(fields.id)


def _train_source(cfg: IngestConfig, workspace: Path, download_dir: Path, stats: SplitStats) -> Source:
    if cfg.corpus == "builtin":
        return Source(_builtin(cfg.builtin.pairs, cfg.builtin.seed, stats), lambda n: f"builtin:{n}")
    assert cfg.files is not None
    return read_split(cfg.files.train, workspace, download_dir, stats, cfg.files.fields)


def _builtin(pairs: int, seed: int, stats: SplitStats) -> Iterator[Item]:
    for number, pair in enumerate(generate_pairs(pairs, seed), start=1):
        stats.read += 1
        yield number, pair, ""


def _write_routed(
    candidates: Candidates, dest: np.ndarray, carve: list[str], out_dir: Path, stats: dict[str, SplitStats]
) -> None:
    """Second pass over the candidates, a column at a time and as bytes: each line to the split `route` chose
    (held-out splits carved in read order). An id column that stays empty in a split is not kept."""
    splits = {TRAIN: "train", **{HELD_OUT[split]: split for split in carve}}
    for side in candidates.sides():
        lines = raw_lines(prepared_file(candidates.directory, CANDIDATES, side))
        paths = {code: prepared_file(out_dir, split, side) for code, split in splits.items()}
        filled: set[int] = set()
        with ExitStack() as stack:
            outs = {code: stack.enter_context(path.open("wb")) for code, path in paths.items()}
            for part in chunks(len(dest)):
                for code, line in zip(dest[part].tolist(), islice(lines, part.stop - part.start), strict=True):
                    out = outs.get(code)
                    if out is not None:
                        out.write(line + b"\n")
                        if line:
                            filled.add(code)
        for code, path in paths.items():
            if side == "id" and code not in filled:
                path.unlink()
    for code, split in splits.items():
        stats[split].kept = int(sum(np.count_nonzero(dest[part] == code) for part in chunks(len(dest))))


def build_splits(
    cfg: IngestConfig, workspace: Path, download_dir: Path
) -> tuple[dict[str, list[Example]], dict[str, SplitStats]]:
    """The prepared splits in memory, for small corpora and tests: `stream_splits` into a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = stream_splits(cfg, workspace, download_dir, Path(tmp))
        return {split: read_examples(Path(tmp), split) for split in SPLITS}, stats


def check_kept(split: str, stats: SplitStats, min_kept: float) -> None:
    """Fail when cleaning kept less than `min_kept` of what was read (held-out moves are not losses)."""
    read = stats.read - sum(stats.moved.values())
    if read <= 0 or stats.kept >= min_kept * read:
        return
    reasons = ", ".join(
        f"{reason} {count}" + (f" ({REASON_KEYS[reason]})" if reason in REASON_KEYS else "")
        for reason, count in stats.dropped.most_common()
        if count
    )
    raise IngestError(
        f"cleaning kept {stats.kept} of {read} {split} items ({100 * stats.kept / read:.1f}%, below "
        f"ingest.clean.min_kept={min_kept:g}); dropped: {reasons}. Change the rule that drops them (for documents, e.g. "
        f"summaries: ingest.clean.max_words and max_ratio null, max_source_words to truncate), or lower ingest.clean.min_kept"
    )


def untracked_inputs(cfg: IngestConfig, workspace: Path) -> list[str]:
    """Inputs whose change DVC would not notice, each with what to do about it.

    DVC reruns `ingest` when its params or its deps change. A file under
    RAW_DIR is covered by that folder being a dep; a file elsewhere, or a URL,
    is covered only by a sha256 pin in params (its content cannot change
    without the pin changing, or ingest failing on the mismatch).
    """
    if cfg.files is None or cfg.corpus != "files":
        return []
    raw = (workspace / RAW_DIR).resolve()
    problems: list[str] = []
    for split in SPLITS:
        source: SplitSource | None = getattr(cfg.files, split)
        for side, location in (source.locations() if source is not None else {}).items():
            if location.sha256 is not None:
                continue
            key = f"ingest.files.{split}.{side}"
            if location.is_url:
                problems.append(
                    f"{key}: {location.path} is a URL without sha256; pin it (`sha256: ...`) so a changed download is caught"
                )
                continue
            path = Path(location.path)
            resolved = (path if path.is_absolute() else workspace / path).resolve()
            if not resolved.is_relative_to(raw):
                problems.append(
                    f"{key}: {location.path} is outside {RAW_DIR}/ and has no sha256, so DVC would not notice when it "
                    f"changes; move it into {RAW_DIR}/ (a dep of the ingest stage) or pin it (`sha256: ...`)"
                )
    return problems


def run(cfg: IngestConfig, workspace: Path, out_dir: Path, stats_path: Path) -> dict[str, SplitStats]:
    problems = untracked_inputs(cfg, workspace)
    if problems:
        raise IngestError("inputs DVC cannot track:\n  " + "\n  ".join(problems))
    fields = cfg.files.fields if cfg.files is not None else None
    with staged_dir(out_dir) as tmp:
        stats = stream_splits(cfg, workspace, workspace / DOWNLOADS_DIR, tmp)
        write_newline(tmp, fields.newline if fields is not None else None)
    report = {"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang, **{k: v.to_dict() for k, v in stats.items()}}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for split in SPLITS:
        s = stats[split]
        log.info(
            "%-5s read %6d  kept %6d  dropped %s  cleaned %s",
            split,
            s.read,
            s.kept,
            dict(s.dropped) or "-",
            dict(s.cleaned) or "-",
        )
    return stats
