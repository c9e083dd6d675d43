"""The pipeline's layout, written once: stage names, the params each reads, every path and the prepared-data format.

`dvc.yaml` spells the same stages out for DVC; `tests/test_layout.py` holds it
to this module (names, commands, params, outs, metrics, plots) and to the
import graph (each stage's code deps). The stage entry points, the Prefect
flow, the registry's run inputs, the CLI and the benchmarks take their paths
from here, so a path is changed in one place and a test catches the other.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from s2s import dotted
from s2s.config import EvaluateConfig
from s2s.errors import S2SError

DVC_FILE = "dvc.yaml"
PARAMS_FILE = "params.yaml"
LOCK_FILE = "dvc.lock"

# Own parallel text lives here: a dep of `ingest`, each file versioned with `dvc add` (README: "Your own data").
RAW_DIR = "data/raw"
PREPARED_DIR = "data/prepared"
INGEST_STATS = "metrics/ingest.json"
TOKENIZER_DIR = "artifacts/tokenizer"
ENCODED_DIR = "data/encoded"  # s2s.encoded: every split's token ids, memory-mapped by training
MODEL_DIR = "artifacts/model"
MODEL_FILE = "model.pt"  # the checkpoint inside MODEL_DIR
TRAIN_CURVE = "metrics/train_curve.csv"
TRAIN_SUMMARY = "metrics/train.json"
EVAL_METRICS = "metrics/eval.json"
HYPOTHESES = "reports/hypotheses.tsv"
ATTENTION_DIR = "reports/attention"
# Outside every DVC output: DVC deletes a stage's outputs before it runs, and these must survive that.
RESUME_DIR = ".cache/train-resume"
DOWNLOADS_DIR = ".cache/downloads"
SWEEP_STORAGE_ENV = "S2S_SWEEP_STORAGE"  # the environment variable naming a sweep's study database (may hold a password)
STATUS_DIR = ".cache/stage-status"  # s2s.stage_status: how a stage that did not finish ended, one file per stage

SPLITS = ("train", "valid", "test")
SIDES = ("src", "tgt")


@dataclass(frozen=True)
class Stage:
    """One DVC stage as s2s defines it; `dvc.yaml` must say the same."""

    name: str
    args: dict[str, str]  # command-line option -> path, as in the stage's `cmd`
    inputs: tuple[str, ...]  # deps that are data (other stages' outputs, raw data); code deps come from the import graph
    params: tuple[str, ...]  # params.yaml sections or dotted keys the stage reads
    outs: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The entry point: `python -m <module>`."""
        return f"s2s.stages.{self.name}"

    @property
    def cmd(self) -> str:
        return " ".join(["python -m", self.module, *(f"{flag} {path}" for flag, path in self.args.items())])

    def path(self, flag: str) -> str:
        return self.args[flag]

    @property
    def uncached(self) -> tuple[str, ...]:
        """Metrics and plots: git keeps them, not DVC's cache (dvc.yaml marks them `cache: false`)."""
        return (*self.metrics, *self.plots)


STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest",
        args={"--out": PREPARED_DIR, "--stats": INGEST_STATS},
        inputs=(RAW_DIR,),
        params=("ingest",),
        outs=(PREPARED_DIR,),
        metrics=(INGEST_STATS,),
    ),
    Stage(
        "tokenizer",
        args={"--data": PREPARED_DIR, "--out": TOKENIZER_DIR},
        inputs=(PREPARED_DIR,),
        params=("tokenizer",),
        outs=(TOKENIZER_DIR,),
    ),
    Stage(
        "encode",
        args={"--data": PREPARED_DIR, "--tokenizer": TOKENIZER_DIR, "--out": ENCODED_DIR},
        inputs=(PREPARED_DIR, TOKENIZER_DIR),
        params=(),
        outs=(ENCODED_DIR,),
    ),
    Stage(
        "train",
        args={
            "--data": PREPARED_DIR,
            "--encoded": ENCODED_DIR,
            "--tokenizer": TOKENIZER_DIR,
            "--out": MODEL_DIR,
            "--curve": TRAIN_CURVE,
            "--summary": TRAIN_SUMMARY,
            "--resume-dir": RESUME_DIR,
        },
        inputs=(PREPARED_DIR, ENCODED_DIR, TOKENIZER_DIR),
        # Validation decodes greedily with these evaluate keys; the rest of `evaluate` does not touch training.
        params=("model", "train", *(f"evaluate.{key}" for key in EvaluateConfig.VALIDATION_KEYS)),
        outs=(MODEL_DIR,),
        metrics=(TRAIN_SUMMARY,),
        plots=(TRAIN_CURVE,),
    ),
    Stage(
        "evaluate",
        args={
            "--data": PREPARED_DIR,
            "--tokenizer": TOKENIZER_DIR,
            "--model": MODEL_DIR,
            "--metrics": EVAL_METRICS,
            "--hypotheses": HYPOTHESES,
            "--attention": ATTENTION_DIR,
        },
        inputs=(PREPARED_DIR, TOKENIZER_DIR, MODEL_DIR),
        params=("evaluate", "train.device"),
        outs=(HYPOTHESES, ATTENTION_DIR),
        metrics=(EVAL_METRICS,),
    ),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
# What the registered model is made of: the outputs whose hashes make its lineage.
LINEAGE_OUTS: dict[str, str] = {"ingest": PREPARED_DIR, "tokenizer": TOKENIZER_DIR, "train": MODEL_DIR}


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise KeyError(f"no stage {name!r}; the stages are {', '.join(STAGE_NAMES)}")


# ------------------------------------------------------------------------ prepared data


class PreparedDataError(S2SError, RuntimeError):
    """Prepared splits that are missing or misaligned."""


Pair = tuple[str, str]


@dataclass(frozen=True)
class Example:
    """One prepared item: source, target, and the further references and id the data may give (valid/test)."""

    src: str
    tgt: str
    refs: tuple[str, ...] = ()  # references beside the target (AESLC's three annotations); scored per evaluate.references
    id: str = ""

    @classmethod
    def of(cls, item: Example | Pair) -> Example:
        return item if isinstance(item, Example) else cls(*item)

    @property
    def pair(self) -> Pair:
        return self.src, self.tgt

    def references(self, which: str = "given") -> list[str]:
        """What an output is scored against: `given` the further references where the data has them, else the
        target; `target` the target alone."""
        if which not in ("given", "target"):
            raise ValueError(f"references {which!r}: choose given or target")
        return list(self.refs) if which == "given" and self.refs else [self.tgt]


# Beside the splits when their texts had line breaks: {"newline": SEPARATOR}. The tokenizer stage copies it into the
# tokenizer, so that every engine (evaluate, `s2s generate`, a served model) joins a new input's lines the same way.
TEXT_FILE = "text.json"
_BREAKS = re.compile(r"[ \t]*(?:\r\n|[\r\n\x85\u2028\u2029])(?:\s*(?:\r\n|[\r\n\x85\u2028\u2029]))*[ \t]*")


def join_lines(text: str, newline: str | None) -> str:
    """A document's line breaks as the visible separator `newline` (one per run of breaks), or as spaces."""
    return _BREAKS.sub(f" {newline} " if newline else " ", text.strip())


def read_newline(directory: Path) -> str | None:
    """The separator the prepared texts in `directory` stand for line breaks with; None if they had none."""
    path = directory / TEXT_FILE
    if not path.is_file():
        return None
    newline = json.loads(path.read_text(encoding="utf-8")).get("newline")
    return str(newline) if newline else None


def prepared_file(directory: Path, split: str, side: str) -> Path:
    """`{split}.src` / `{split}.tgt`: one text per line, UTF-8, line-aligned; beside them, where the data has them,
    `{split}.ref0`, `{split}.ref1`, ... (further references) and `{split}.id` (item ids)."""
    return directory / f"{split}.{side}"


def _ref_side(k: int) -> str:
    return f"ref{k}"


@contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir` that replaces it when the block ends without an error (else is removed): all
    files or none replace the old ones, so a failed run leaves the last good output."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_newline(directory: Path, newline: str | None) -> None:
    """Record in TEXT_FILE the separator the texts' line breaks were joined with (`join_lines`), if any."""
    if newline:
        (directory / TEXT_FILE).write_text(json.dumps({"newline": newline}, ensure_ascii=False) + "\n", encoding="utf-8")


class PreparedWriter:
    """One split's columns written an item at a time, in the format `prepared_file` names, so memory stays flat.
    Columns: src, tgt, then `n_refs` references, then the id when `ids`; an id column that stayed empty is removed."""

    def __init__(self, directory: Path, split: str, n_refs: int = 0, ids: bool = False) -> None:
        self.sides = [*SIDES, *(_ref_side(k) for k in range(n_refs)), *(["id"] if ids else [])]
        self.paths = [prepared_file(directory, split, side) for side in self.sides]
        with ExitStack() as opened:  # all or none: a failed open closes the ones before it
            self._handles = [opened.enter_context(path.open("w", encoding="utf-8", newline="\n")) for path in self.paths]
            opened.pop_all()
        self._ids = ids
        self._any_id = False
        self.count = 0

    def write(self, texts: Sequence[str]) -> None:
        """One item's texts in column order (see the class); none may hold a line break."""
        for handle, text in zip(self._handles, texts, strict=True):
            handle.write(text + "\n")
        self._any_id = self._any_id or (self._ids and bool(texts[-1]))
        self.count += 1

    def write_many(self, rows: Sequence[Sequence[str]]) -> None:
        """Items as `write` takes them, a column at a time (faster for many)."""
        if not rows:
            return
        for k, handle in enumerate(self._handles):
            handle.write("".join([row[k] + "\n" for row in rows]))
        self._any_id = self._any_id or (self._ids and any(row[-1] for row in rows))
        self.count += len(rows)

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        if self._ids and not self._any_id:
            self.paths[-1].unlink()

    def __enter__(self) -> PreparedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_prepared(splits: dict[str, list[Example]] | dict[str, list[Pair]], out_dir: Path, newline: str | None = None) -> None:
    """Write every split atomically (`staged_dir`). `newline`: the separator the texts' line breaks were joined
    with (`join_lines`), recorded in TEXT_FILE."""
    with staged_dir(out_dir) as tmp:
        write_newline(tmp, newline)
        for split, items in splits.items():
            examples = [Example.of(item) for item in items]
            n_refs = {len(e.refs) for e in examples}
            if len(n_refs) > 1:
                raise PreparedDataError(f"{split}: items differ in their number of references ({sorted(n_refs)})")
            ids = any(e.id for e in examples)
            with PreparedWriter(tmp, split, max(n_refs, default=0), ids) as writer:
                for e in examples:
                    writer.write((e.src, e.tgt, *e.refs, e.id) if ids else (e.src, e.tgt, *e.refs))


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_bytes().decode("utf-8")  # bytes: read_text would also turn a "\r" into a line break
    except FileNotFoundError as err:
        raise PreparedDataError(f"{err.filename}: prepared split not found; run the ingest stage first") from None
    # "\n" only, as written: str.splitlines would also split at U+2028 and other separators inside a text.
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def iter_lines(path: Path) -> Iterator[str]:
    """A prepared file's lines one at a time, split at "\n" only, as `_read_lines` reads them (memory stays flat).
    The file is opened here, so a missing one is an error before the first line is asked for."""
    try:
        handle = path.open(encoding="utf-8", newline="\n")
    except FileNotFoundError as err:
        raise PreparedDataError(f"{err.filename}: prepared split not found; run the ingest stage first") from None
    return _lines(handle)


def _lines(handle: TextIO) -> Iterator[str]:
    with handle:
        for line in handle:
            yield line[:-1] if line.endswith("\n") else line


def read_prepared(directory: Path, split: str) -> list[Pair]:
    return [e.pair for e in read_examples(directory, split)]


def read_examples(directory: Path, split: str) -> list[Example]:
    """A split's items with their further references and ids, where the data has them."""
    src_path, tgt_path = (prepared_file(directory, split, side) for side in SIDES)
    src, tgt = _read_lines(src_path), _read_lines(tgt_path)
    if len(src) != len(tgt):
        raise PreparedDataError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
    extra: list[list[str]] = []
    while (path := prepared_file(directory, split, _ref_side(len(extra)))).is_file():
        extra.append(_read_lines(path))
    id_path = prepared_file(directory, split, "id")
    ids = _read_lines(id_path) if id_path.is_file() else [""] * len(src)
    for path, column in [*((prepared_file(directory, split, _ref_side(k)), c) for k, c in enumerate(extra)), (id_path, ids)]:
        if len(column) != len(src):
            raise PreparedDataError(f"{path} has {len(column)} lines but {src_path} has {len(src)}")
    return [Example(s, t, tuple(column[i] for column in extra), ids[i]) for i, (s, t) in enumerate(zip(src, tgt, strict=True))]


# ----------------------------------------------------------------------------- dvc.lock


@dataclass(frozen=True)
class LockView:
    """What `dvc.lock` recorded: the params each stage ran with and the hashes of its outputs."""

    params: dict[str, Any] = field(default_factory=dict)  # merged over stages, nested like params.yaml
    outs: dict[str, str] = field(default_factory=dict)  # output path -> md5

    @classmethod
    def from_lock(cls, lock: dict[str, Any]) -> LockView:
        params: dict[str, Any] = {}
        outs: dict[str, str] = {}
        for entry in (lock or {}).get("stages", {}).values():
            for values in entry.get("params", {}).values():
                for key, value in values.items():
                    dotted.merge_at(params, key, value)
            for out in entry.get("outs", []):
                outs[out["path"]] = out.get("md5", "")
        return cls(params, outs)
