"""Ingest: parallel text in, cleaned train/valid/test splits and per-reason counts out.

Every input line ends up kept, dropped under exactly one named reason, or moved
to a held-out split, so `kept + sum(dropped) + sum(moved) == read` holds for
every split read from input; lines that are kept but changed are counted under
`cleaned`. Nothing is dropped silently.
"""

from __future__ import annotations

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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from s2s.config import CleanConfig, DocumentFields, IngestConfig, Location, SplitSource
from s2s.corpus import generate_pairs
from s2s.errors import S2SError
from s2s.layout import DOWNLOADS_DIR, RAW_DIR, SPLITS, Example, join_lines, write_prepared

log = logging.getLogger(__name__)

# C0/C1 control characters except tab; NUL included. Tabs are allowed only inside
# sentences read from two-file corpora (a TSV line's tab is its column separator).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")
# A run of line breaks (with the blanks around them) in a document; U+2028/2029 and NEL are line breaks too.
# The clean rule a drop reason comes from: the key to change when ingest keeps too little.
REASON_KEYS = {
    "too_long": "ingest.clean.max_words", "length_ratio": "ingest.clean.max_ratio", "duplicate": "ingest.clean.dedup",
    "leak": "ingest.clean.drop_leaks",
}  # fmt: skip


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
    # First few (file, line, reason) examples, so a user can look at them.
    examples: list[str] = field(default_factory=list)

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {reason}")

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


@dataclass(frozen=True)
class RawLine:
    """One raw item with the place it came from, for error messages; documents arrive decoded already."""

    src: bytes | str
    tgt: bytes | str
    where: str
    refs: tuple[bytes | str, ...] = ()
    id: str = ""


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


def read_raw_lines(path: Path) -> list[bytes]:
    """Lines as bytes (decoding is per line, so one bad line cannot sink the file)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise IngestError(f"{path}: cannot read: {err}") from None
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line does not start a new one
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def read_split(
    source: SplitSource, workspace: Path, download_dir: Path, fields: DocumentFields | None = None, references: bool = False
) -> tuple[list[RawLine], SplitStats]:
    """A split's raw items; `references`: read the reference fields too (valid and test)."""
    stats = SplitStats()
    document = source.document
    if document is not None:
        kind, location = document
        assert fields is not None  # guaranteed by FilesSource
        path = fetch(location, workspace, download_dir)
        documents = read_documents(path, kind, fields, references)
        stats.read = len(documents)
        return documents, stats
    if source.tsv is not None:
        path = fetch(source.tsv, workspace, download_dir)
        rows: list[RawLine] = []
        for number, line in enumerate(read_raw_lines(path), start=1):
            stats.read += 1
            columns = line.split(b"\t")
            if len(columns) != 2:
                stats.drop("tsv_columns", f"{path}:{number}")
                continue
            rows.append(RawLine(columns[0], columns[1], f"{path}:{number}"))
        return rows, stats

    assert source.src is not None and source.tgt is not None  # guaranteed by SplitSource
    src_path = fetch(source.src, workspace, download_dir)
    tgt_path = fetch(source.tgt, workspace, download_dir)
    src_lines, tgt_lines = read_raw_lines(src_path), read_raw_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise IngestError(
            f"parallel files differ in line count: {src_path} has {len(src_lines)} lines, {tgt_path} has {len(tgt_lines)} lines"
        )
    stats.read = len(src_lines)
    rows = [
        RawLine(s, t, f"{src_path}:{n} / {tgt_path}:{n}")
        for n, (s, t) in enumerate(zip(src_lines, tgt_lines, strict=True), start=1)
    ]
    return rows, stats


def _records(path: Path, kind: str) -> list[tuple[int, object]]:
    """(line number, parsed record) of a JSON Lines or CSV file; a record that does not parse is an error."""
    lines = read_raw_lines(path)
    for number, line in enumerate(lines, start=1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise IngestError(f"{path}:{number}: not valid UTF-8") from None
    text = b"\n".join(lines).decode("utf-8")
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
        out: list[tuple[int, object]] = []
        try:
            reader.fieldnames  # noqa: B018 -- reads the header row, so that line_num counts from the first record
            start = reader.line_num + 1
            for record in reader:
                out.append((start, record))
                start = reader.line_num + 1
        except csv.Error as err:
            raise IngestError(f"{path}:{reader.line_num}: not valid CSV: {err}") from None
        return out
    records: list[tuple[int, object]] = []
    for number, line_text in enumerate(text.split("\n"), start=1):
        if not line_text.strip():
            continue
        try:
            records.append((number, json.loads(line_text)))
        except json.JSONDecodeError as err:
            raise IngestError(f"{path}:{number}: not valid JSON: {err.msg} (column {err.colno})") from None
    return records


def read_documents(path: Path, kind: str, fields: DocumentFields, references: bool) -> list[RawLine]:
    """Items of a JSON Lines or CSV file; a missing or non-string field is an error naming file, line and field."""
    names = [fields.source, fields.target, *(fields.references if references else ()), *([fields.id] if fields.id else [])]
    rows = []
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
        texts = [join_lines(record[name], fields.newline) for name in names]
        n_refs = len(fields.references) if references else 0
        rows.append(RawLine(texts[0], texts[1], where, tuple(texts[2 : 2 + n_refs]),
                            str(record[fields.id]).strip() if fields.id else ""))  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- clean


def _clean_side(raw: bytes | str, stats: SplitStats) -> tuple[str | None, str | None]:
    """Decoded, whitespace-normalised text, or (None, reason) when the line must go."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    if _CONTROL.search(text):
        return None, "control_chars"
    normal = _SPACES.sub(" ", text).strip()
    if not normal:
        return None, "empty"
    if normal != text:
        stats.cleaned["whitespace"] += 1
    return normal, None


def _usable(row: RawLine, stats: SplitStats) -> Example | None:
    """The item with every text decoded and normalised, or None (dropped, counted) when one of them is unusable."""
    texts: list[str] = []
    for raw in (row.src, row.tgt, *row.refs):
        text, reason = _clean_side(raw, stats)
        if text is None:
            stats.drop(reason or "empty", row.where)
            return None
        texts.append(text)
    return Example(texts[0], texts[1], tuple(texts[2:]), row.id)


def _filtered(example: Example, cfg: CleanConfig) -> str | None:
    """The first length rule the (truncated) training item fails, or None."""
    n_src, n_tgt = len(example.src.split()), len(example.tgt.split())
    longer, shorter = max(n_src, n_tgt), min(n_src, n_tgt)
    if cfg.max_words is not None and longer > cfg.max_words:
        return "too_long"
    if cfg.max_ratio is not None and longer >= cfg.min_ratio_words and longer > cfg.max_ratio * shorter:
        return "length_ratio"
    return None


def clean_lines(rows: list[RawLine], stats: SplitStats, cfg: CleanConfig, filters: bool = True) -> list[Example]:
    """Apply the documented rules in order; the first rule that fails names the reason.

    Unusable lines (invalid UTF-8, control characters, empty) always go. The
    truncation and the filters (length, ratio, duplicates) apply only when
    `filters` is true: a given valid or test set is a benchmark and must stay
    as published.
    """
    kept: list[Example] = []
    seen: set[tuple[str, str]] = set()
    for row in rows:
        example = _usable(row, stats)
        if example is None:
            continue
        if not filters:
            kept.append(example)
            continue
        words = example.src.split()
        if cfg.max_source_words is not None and len(words) > cfg.max_source_words:
            example = Example(" ".join(words[: cfg.max_source_words]), example.tgt, example.refs, example.id)
            stats.cleaned["truncated"] += 1
        reason = _filtered(example, cfg)
        if reason is None and cfg.dedup and example.pair in seen:
            reason = "duplicate"
        if reason is not None:
            stats.drop(reason, row.where)
            continue
        seen.add(example.pair)
        kept.append(example)
    return kept


def drop_leaks(train: list[Example], held_out: list[Example], stats: SplitStats) -> list[Example]:
    """Remove training pairs whose source also occurs in valid/test (keeps test sets standard)."""
    sources = {e.src for e in held_out}
    kept = [e for e in train if e.src not in sources]
    stats.dropped["leak"] += len(train) - len(kept)
    return kept


# ----------------------------------------------------------------------------- main


def build_splits(
    cfg: IngestConfig, workspace: Path, download_dir: Path
) -> tuple[dict[str, list[Example]], dict[str, SplitStats]]:
    """Read, clean and split the configured corpus. Pure apart from reading inputs."""
    stats: dict[str, SplitStats] = {}
    cleaned: dict[str, list[Example]] = {}
    if cfg.corpus == "builtin":
        pairs = generate_pairs(cfg.builtin.pairs, cfg.builtin.seed)
        rows = [RawLine(s.encode(), t.encode(), f"builtin:{n}") for n, (s, t) in enumerate(pairs, start=1)]
        stats["train"] = SplitStats(read=len(rows))
        cleaned["train"] = clean_lines(rows, stats["train"], cfg.clean)
    else:
        assert cfg.files is not None
        for split in SPLITS:
            source = getattr(cfg.files, split)
            if source is None:
                continue
            rows, stats[split] = read_split(source, workspace, download_dir, cfg.files.fields, references=split != "train")
            cleaned[split] = clean_lines(rows, stats[split], cfg.clean, filters=split == "train")

    rng = random.Random(cfg.seed)
    for split in ("test", "valid"):
        if split in cleaned:
            continue
        # Carved out of train: the pairs move, so they count as kept in their new split.
        train = cleaned["train"]
        rng.shuffle(train)
        size = getattr(cfg.holdout, split)
        if len(train) <= size:
            raise IngestError(f"cannot hold out {size} {split} pairs: train has only {len(train)} after cleaning")
        cleaned[split], cleaned["train"] = train[:size], train[size:]
        stats["train"].moved[split] += size
        stats[split] = SplitStats(read=0, kept=size)

    if cfg.clean.drop_leaks:
        cleaned["train"] = drop_leaks(cleaned["train"], cleaned["valid"] + cleaned["test"], stats["train"])
    for split in SPLITS:
        if stats[split].read:
            stats[split].kept = len(cleaned[split])
        if not cleaned[split]:
            raise IngestError(f"the {split} split is empty after cleaning: {stats[split].to_dict()['dropped']}")
        check_kept(split, stats[split], cfg.clean.min_kept)
    return cleaned, stats


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
    splits, stats = build_splits(cfg, workspace, workspace / DOWNLOADS_DIR)
    fields = cfg.files.fields if cfg.files is not None else None
    write_prepared(splits, out_dir, fields.newline if fields is not None else None)
    report = {"src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang, **{k: v.to_dict() for k, v in stats.items()}}
    stats_path.parent.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for split in SPLITS:
        s = stats[split]
        log.info(
            "%-5s read %6d  kept %6d  dropped %s  cleaned %s",
            split,
            s.read,
            len(splits[split]),
            dict(s.dropped) or "-",
            dict(s.cleaned) or "-",
        )
    return stats
