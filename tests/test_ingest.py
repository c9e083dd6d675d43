"""Ingest: every line kept or dropped by a named reason; clear errors naming files and lines."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from s2s.config import CleanConfig, ConfigError, IngestConfig, parse_params
from s2s.ingest import IngestError, build_splits, run, stream_splits
from s2s.layout import Example, read_examples, read_prepared, write_prepared


def files_config(train: dict, valid: dict | None = None, test: dict | None = None, **extra: object) -> IngestConfig:
    files = {"train": train, **({"valid": valid} if valid else {}), **({"test": test} if test else {})}
    return parse_params({"ingest": {"corpus": "files", "files": files, **extra}}).ingest


def write_pair(tmp: Path, name: str, src: list[bytes], tgt: list[bytes]) -> dict[str, str]:
    (tmp / f"{name}.en").write_bytes(b"".join(line + b"\n" for line in src))
    (tmp / f"{name}.de").write_bytes(b"".join(line + b"\n" for line in tgt))
    return {"src": str(tmp / f"{name}.en"), "tgt": str(tmp / f"{name}.de")}


def good(n: int, prefix: str = "s") -> list[bytes]:
    return [f"{prefix} sentence number {i} here".encode() for i in range(n)]


def test_builtin_corpus_splits_and_counts(tmp_path: Path) -> None:
    cfg = parse_params({"ingest": {"builtin": {"pairs": 600, "seed": 2}, "holdout": {"valid": 50, "test": 60}}}).ingest
    stats = run(cfg, tmp_path, tmp_path / "prepared", tmp_path / "stats.json")
    assert [len(read_prepared(tmp_path / "prepared", s)) for s in ("valid", "test")] == [50, 60]
    train = stats["train"]
    assert train.read == 600
    assert train.read == train.kept + sum(train.dropped.values()) + sum(train.moved.values())
    assert train.moved == {"valid": 50, "test": 60}
    report = json.loads((tmp_path / "stats.json").read_text())
    assert report["train"]["kept"] == len(read_prepared(tmp_path / "prepared", "train"))
    # Deterministic: the same config gives byte-identical splits.
    run(cfg, tmp_path, tmp_path / "again", tmp_path / "stats2.json")
    for name in ("train.src", "train.tgt", "test.src"):
        assert (tmp_path / "prepared" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_line_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    train = write_pair(tmp_path, "train", good(5), good(4))
    with pytest.raises(IngestError, match=r"train\.en has 5 lines, .*train\.de has 4 lines"):
        build_splits(files_config(train), tmp_path, tmp_path / "dl")


def test_every_cleaning_rule_is_counted_by_reason(tmp_path: Path) -> None:
    src = [
        *good(20),
        b"bad \xff\xfe utf8",  # invalid_utf8
        b"nul \x00 inside",  # control_chars
        b"",  # empty
        b"   \t ",  # empty after whitespace
        b" ".join([b"w"] * 120),  # too_long
        b"one two three four five six seven eight nine ten eleven twelve thirteen",  # length_ratio
        b"s sentence number 3 here",  # duplicate of line 4
        b"  spaced   out   line  ok ",  # kept, cleaned: whitespace
    ]
    tgt = [*good(20), b"x", b"y", b"z", b"z", b"w", b"two words", b"s sentence number 3 here", b"fine clean line"]
    train = write_pair(tmp_path, "train", src, tgt)
    cfg = files_config(train, holdout={"valid": 2, "test": 2}, clean=CleanConfig(max_words=100).model_dump())
    splits, stats = build_splits(cfg, tmp_path, tmp_path / "dl")
    s = stats["train"]
    assert dict(s.dropped) == {
        "invalid_utf8": 1,
        "control_chars": 1,
        "empty": 2,
        "too_long": 1,
        "length_ratio": 1,
        "duplicate": 1,
        "leak": 0,
    }
    assert s.cleaned["whitespace"] == 1
    assert s.read == len(src) == s.kept + sum(s.dropped.values()) + sum(s.moved.values())
    assert ("spaced out line ok", "fine clean line") in [e.pair for e in splits["train"] + splits["valid"] + splits["test"]]
    assert any(e.endswith("train.en:21 / " + str(tmp_path / "train.de") + ":21: invalid_utf8") for e in s.examples)


def test_given_test_set_is_not_filtered_but_leaks_leave_train(tmp_path: Path) -> None:
    train = write_pair(tmp_path, "train", good(10), good(10, "t"))
    valid = write_pair(tmp_path, "valid", good(2, "v"), good(2, "vt"))
    # The test set repeats a pair (kept: benchmarks stay as published) and shares a source with train.
    test = write_pair(tmp_path, "test", [b"s sentence number 1 here", b"dup", b"dup", b""], [b"x", b"d", b"d", b"e"])
    splits, stats = build_splits(files_config(train, valid, test), tmp_path, tmp_path / "dl")
    assert [e.pair for e in splits["test"]] == [("s sentence number 1 here", "x"), ("dup", "d"), ("dup", "d")]
    assert stats["test"].dropped == {"empty": 1}
    assert stats["train"].dropped["leak"] == 1
    assert "s sentence number 1 here" not in [e.src for e in splits["train"]]


def test_tsv_and_gzip(tmp_path: Path) -> None:
    rows = b"".join(f"src {i}\ttgt {i}\n".encode() for i in range(30)) + b"no tab here\n" + b"a\tb\tc\n"
    with gzip.open(tmp_path / "corpus.tsv.gz", "wb") as handle:
        handle.write(rows)
    cfg = files_config({"tsv": str(tmp_path / "corpus.tsv.gz")}, holdout={"valid": 3, "test": 3})
    splits, stats = build_splits(cfg, tmp_path, tmp_path / "dl")
    assert stats["train"].dropped["tsv_columns"] == 2
    assert sum(len(v) for v in splits.values()) == 30


def test_split_left_empty_is_an_error(tmp_path: Path) -> None:
    train = write_pair(tmp_path, "train", good(10), good(10))
    test = write_pair(tmp_path, "test", [b"", b"  "], [b"a", b"b"])
    with pytest.raises(IngestError, match=r"the test split is empty after cleaning: \{'empty': 2\}"):
        build_splits(files_config(train, test=test, holdout={"valid": 2}), tmp_path, tmp_path / "dl")


def test_local_sha256_mismatch(tmp_path: Path) -> None:
    train = write_pair(tmp_path, "train", good(10), good(10))
    with pytest.raises(IngestError, match=r"train\.en: sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        build_splits(files_config({**train, "src": {"path": train["src"], "sha256": "0" * 64}}), tmp_path, tmp_path / "dl")


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_url_download_is_verified_and_never_left_half_done(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, root = http_root
    write_pair(root, "train", good(20), good(20, "t"))
    sha = {side: hashlib.sha256((root / f"train.{side}").read_bytes()).hexdigest() for side in ("en", "de")}
    downloads = tmp_path / "dl"
    ok = {"src": {"path": f"{base}/train.en", "sha256": sha["en"]}, "tgt": {"path": f"{base}/train.de", "sha256": sha["de"]}}
    splits, _ = build_splits(files_config(ok, holdout={"valid": 2, "test": 2}), tmp_path, downloads)
    assert sum(len(v) for v in splits.values()) == 20
    assert sorted(p.name.split("-", 1)[1] for p in downloads.iterdir()) == ["train.de", "train.en"]

    bad = {**ok, "src": {"path": f"{base}/train.en?v=2", "sha256": "f" * 64}}
    before = sorted(downloads.iterdir())
    with pytest.raises(IngestError, match=r"train\.en\?v=2: sha256 mismatch"):
        build_splits(files_config(bad), tmp_path, downloads)
    assert sorted(downloads.iterdir()) == before  # no partial or unverified file left behind

    missing = {**ok, "src": f"{base}/nope.en"}
    with pytest.raises(IngestError, match=r"nope\.en: download failed: HTTP Error 404"):
        build_splits(files_config(missing), tmp_path, downloads)
    closed = {**ok, "src": "http://127.0.0.1:9/closed.en"}
    with pytest.raises(IngestError, match=r"closed\.en: download failed"):
        build_splits(files_config(closed), tmp_path, downloads)


def test_empty_corpus_is_an_error(tmp_path: Path) -> None:
    train = write_pair(tmp_path, "train", [], [])
    with pytest.raises(IngestError, match=r"cannot hold out 1000 test pairs: train has only 0 after cleaning"):
        build_splits(files_config(train), tmp_path, tmp_path / "dl")


def test_inputs_dvc_cannot_see_change_are_refused_by_key(tmp_path: Path) -> None:
    outside = write_pair(tmp_path, "train", good(30), good(30))
    (tmp_path / "data" / "raw").mkdir(parents=True)
    inside = write_pair(tmp_path / "data" / "raw", "own", good(30), good(30))
    url = {"tsv": "https://example.invalid/corpus.tsv"}
    pinned = {"path": outside["src"], "sha256": hashlib.sha256((tmp_path / "train.en").read_bytes()).hexdigest()}
    cfg = files_config({"src": pinned, "tgt": outside["tgt"]}, valid=inside, test=url)
    with pytest.raises(IngestError) as err:
        run(cfg, tmp_path, tmp_path / "prepared", tmp_path / "stats.json")
    message = str(err.value)
    assert "ingest.files.train.tgt: " + outside["tgt"] + " is outside data/raw/ and has no sha256" in message
    assert "ingest.files.test.tsv: https://example.invalid/corpus.tsv is a URL without sha256" in message
    assert "ingest.files.train.src" not in message and "ingest.files.valid" not in message  # pinned / under data/raw
    assert not (tmp_path / "prepared").exists()  # refused before anything was read or written


# --------------------------------------------------------------------------- documents


FIELDS = {"source": "body", "target": "subject", "references": ["ann0", "ann1", "ann2"], "id": "id"}


def write_jsonl(path: Path, records: list[dict[str, object]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def emails(n: int, prefix: str, refs: bool) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for i in range(n):
        record: dict[str, object] = {
            "id": f"{prefix}-{i}",
            "body": f"Hi all,\n\n  meeting {prefix} {i} moved to Tuesday.\r\nThanks,\nAnn",
            "subject": f"meeting {i}",
        }
        if refs:
            record.update({"ann0": f"meeting {i} moved", "ann1": f"Tuesday meeting {i}", "ann2": f"new time {i}"})
        out.append(record)
    return out


def document_config(tmp: Path, train: list[dict[str, object]], dev: list[dict[str, object]], **clean: object) -> IngestConfig:
    files = {
        "train": {"jsonl": write_jsonl(tmp / "train.jsonl", train)},
        "valid": {"jsonl": write_jsonl(tmp / "dev.jsonl", dev)},
        "test": {"jsonl": write_jsonl(tmp / "test.jsonl", dev)},
        "fields": FIELDS,
    }
    return parse_params({"ingest": {"corpus": "files", "files": files, "clean": clean}}).ingest


def test_jsonl_documents_keep_line_breaks_references_and_ids(tmp_path: Path) -> None:
    cfg = document_config(tmp_path, emails(30, "t", refs=False), emails(5, "d", refs=True), max_ratio=None)
    write_prepared(build_splits(cfg, tmp_path, tmp_path / "dl")[0], tmp_path / "prepared")
    test = read_examples(tmp_path / "prepared", "test")
    # A run of breaks (with the blanks around them, \r\n too) is one visible separator, which the tokenizer learns.
    assert test[1] == Example(
        "Hi all, ¶ meeting d 1 moved to Tuesday. ¶ Thanks, ¶ Ann",
        "meeting 1",
        ("meeting 1 moved", "Tuesday meeting 1", "new time 1"),
        "d-1",
    )
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir() if p.name.startswith("test.")) == [
        "test.id", "test.ref0", "test.ref1", "test.ref2", "test.src", "test.tgt",
    ]  # fmt: skip
    train = read_examples(tmp_path / "prepared", "train")
    assert len(train) == 30 and train[0].refs == () and train[0].id == "t-0"  # train has no references to read
    assert [e.pair for e in train] == read_prepared(tmp_path / "prepared", "train")


def test_csv_documents_with_quoted_line_breaks(tmp_path: Path) -> None:
    rows = ["id,body,subject", *(f'{i},"line one {i}\nline two, quoted ""x""",subject {i}' for i in range(12))]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    fields = {"source": "body", "target": "subject", "id": "id", "newline": None}  # line breaks become spaces
    files = {"train": {"csv": str(tmp_path / "train.csv")}, "fields": fields}
    ingest = {"corpus": "files", "holdout": {"valid": 2, "test": 2}, "clean": {"max_ratio": None}, "files": files}
    cfg = parse_params({"ingest": ingest}).ingest
    splits, stats = build_splits(cfg, tmp_path, tmp_path / "dl")
    assert stats["train"].read == 12
    example = next(e for e in splits["train"] + splits["valid"] + splits["test"] if e.id == "3")
    assert example == Example('line one 3 line two, quoted "x"', "subject 3", (), "3")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "subject": "s"}', r"dev\.jsonl:3: field 'body' is missing \(fields: id, subject\)"),
        ('{"id": "x", "body": "b", "subject": 7}', r"dev\.jsonl:3: field 'subject' is a int, expected a string"),
        ('{"id": "x", "body": "b", "subject": "s", "ann0": "a", "ann1": "b"}', r"dev\.jsonl:3: field 'ann2' is missing"),
        ('{"id": "x", "body": "b", ', r"dev\.jsonl:3: not valid JSON"),
        ('["a list"]', r"dev\.jsonl:3: expected an object with fields body, subject, ann0, ann1, ann2, id, got list"),
    ],
)
def test_a_bad_document_names_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    cfg = document_config(tmp_path, emails(30, "t", refs=False), emails(5, "d", refs=True))
    dev = tmp_path / "dev.jsonl"
    lines = dev.read_text().splitlines()
    dev.write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    with pytest.raises(IngestError, match=message):
        build_splits(cfg, tmp_path, tmp_path / "dl")


def test_long_sources_are_truncated_in_train_only_and_counted(tmp_path: Path) -> None:
    train = [{"id": str(i), "body": " ".join(f"w{i}-{j}" for j in range(50 + i)), "subject": f"s {i}"} for i in range(20)]
    dev = [{**r, "ann0": "a", "ann1": "b", "ann2": "c"} for r in train[10:14]]  # longer than the cut
    cfg = document_config(tmp_path, train, dev, max_words=None, max_ratio=None, max_source_words=55, drop_leaks=False)
    splits, stats = build_splits(cfg, tmp_path, tmp_path / "dl")
    assert [len(e.src.split()) for e in splits["train"]] == [min(50 + i, 55) for i in range(20)]
    assert stats["train"].cleaned["truncated"] == 14 and not stats["train"].dropped
    # Given valid and test sets are benchmarks: neither truncated nor filtered.
    assert [len(e.src.split()) for e in splits["test"]] == [60, 61, 62, 63]
    assert "truncated" not in stats["test"].cleaned


def test_cleaning_that_keeps_too_little_fails_with_counts_and_keys(tmp_path: Path) -> None:
    train = [{"id": str(i), "body": " ".join(["word"] * (3 if i < 2 else 20 + i)), "subject": f"subject {i}"} for i in range(20)]
    cfg = document_config(tmp_path, train, emails(4, "d", refs=True))  # translation's rules: summaries fail the ratio
    with pytest.raises(IngestError) as err:
        build_splits(cfg, tmp_path, tmp_path / "dl")
    assert str(err.value).startswith("cleaning kept 2 of 20 train items (10.0%, below ingest.clean.min_kept=0.5); "
                                     "dropped: length_ratio 18 (ingest.clean.max_ratio).")  # fmt: skip
    # With the ratio rule off (a summarisation preset), every email stays.
    cfg = document_config(tmp_path, train, emails(4, "d", refs=True), max_ratio=None)
    splits, _ = build_splits(cfg, tmp_path, tmp_path / "dl")
    assert len(splits["train"]) == 20


def test_documents_need_their_fields_named() -> None:
    with pytest.raises(ConfigError, match=r"ingest\.files: .*train read documents \(jsonl/csv\): name their `fields`"):
        parse_params({"ingest": {"corpus": "files", "files": {"train": {"jsonl": "data/raw/a.jsonl"}}}})
    with pytest.raises(ConfigError, match=r"ingest\.files\.train: .*give exactly one layout"):
        parse_params({"ingest": {"corpus": "files", "files": {"train": {"jsonl": "a.jsonl", "tsv": "a.tsv"}, "fields": FIELDS}}})


def test_worker_processes_give_the_files_and_counts_of_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from s2s import ingest

    # Small batches, so that 1,500 items make six batches and the pool really runs (it starts at the second batch).
    monkeypatch.setattr(ingest, "BATCH", 256)
    src = [*good(1200), *good(300)]  # the last 300 repeat earlier pairs: duplicates found across batches
    train = write_pair(tmp_path, "train", [*src[:700], b"bad \xff", *src[700:]], [*src[:700], b"x", *src[700:]])
    cfg = files_config(train, holdout={"valid": 40, "test": 30})
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        out.mkdir()
        stats = ingest.stream_splits(cfg, tmp_path, tmp_path / "dl", out, workers=workers)
        outs[workers] = ({p.name: p.read_bytes() for p in out.iterdir()}, {k: v.to_dict() for k, v in stats.items()})
    assert outs[1] == outs[2]
    files, stats = outs[2]
    assert sorted(files) == [f"{split}.{side}" for split in ("test", "train", "valid") for side in ("src", "tgt")]
    assert stats["train"]["dropped"] == {"duplicate": 300, "invalid_utf8": 1, "leak": 0}
    assert stats["train"]["kept"] == 1200 - 70 and stats["train"]["moved"] == {"test": 30, "valid": 40}
    # Examples in read order, the corpus-wide rule's (duplicates) merged with the per-item rules' (line 701).
    lines = [int(e.split(" / ")[0].rsplit(":", 1)[1]) for e in stats["train"]["examples"]]
    assert lines == [701, *range(1202, 1221)]
    assert stats["train"]["examples"][0].endswith(": invalid_utf8")


@pytest.mark.parametrize("block", [1, 2, 3, 7, 1 << 22])
def test_lines_split_alike_whatever_the_read_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    from s2s import ingest

    monkeypatch.setattr(ingest, "READ_BLOCK", block)  # a "\r\n" split between two reads included
    path = tmp_path / "lines.txt"
    path.write_bytes(b"a\r\nbb\n\r\nccc\rd\r\n\nlast\r")
    assert list(ingest.raw_lines(path)) == [b"a", b"bb", b"", b"ccc\rd", b"", b"last"]
    assert list(ingest.raw_lines(path, universal=True)) == [b"a\r\n", b"bb\n", b"\r\n", b"ccc\r", b"d\r\n", b"\n", b"last\r"]


def test_csv_with_old_mac_line_ends(tmp_path: Path) -> None:
    rows = ["id,body,subject", *(f"{i},body number {i} here,subject {i}" for i in range(12))]
    (tmp_path / "train.csv").write_bytes("\r".join(rows).encode() + b"\r")
    files = {"train": {"csv": str(tmp_path / "train.csv")}, "fields": {"source": "body", "target": "subject", "id": "id"}}
    cfg = parse_params({"ingest": {"corpus": "files", "holdout": {"valid": 2, "test": 2}, "files": files}}).ingest
    splits, stats = build_splits(cfg, tmp_path, tmp_path / "dl")
    assert stats["train"].read == 12
    assert sorted(int(e.id) for split in splits.values() for e in split) == list(range(12))


def test_given_text_splits_beside_document_training_data(tmp_path: Path) -> None:
    """Valid and test as line-aligned files while train is JSON Lines with references and ids: no columns invented."""
    valid = write_pair(tmp_path, "valid", good(3, "v"), good(3, "vt"))
    test = write_pair(tmp_path, "test", good(3, "x"), good(3, "xt"))
    files = {"train": {"jsonl": write_jsonl(tmp_path / "train.jsonl", emails(20, "t", refs=False))},
             "valid": valid, "test": test, "fields": FIELDS}  # fmt: skip
    cfg = parse_params({"ingest": {"corpus": "files", "clean": {"max_ratio": None}, "files": files}}).ingest
    (tmp_path / "prepared").mkdir()
    stream_splits(cfg, tmp_path, tmp_path / "dl", tmp_path / "prepared")
    names = sorted(p.name for p in (tmp_path / "prepared").iterdir())
    assert names == ["test.src", "test.tgt", "train.id", "train.src", "train.tgt", "valid.src", "valid.tgt"]


def test_an_id_column_is_kept_only_in_the_splits_whose_items_have_ids(tmp_path: Path) -> None:
    records = emails(30, "t", refs=False)
    for record in records[1:]:
        record["id"] = " "  # blank: no id
    files = {"train": {"jsonl": write_jsonl(tmp_path / "train.jsonl", records)}, "fields": FIELDS}
    ingest = {"corpus": "files", "holdout": {"valid": 3, "test": 3}, "clean": {"max_ratio": None}, "files": files}
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    stream_splits(parse_params({"ingest": ingest}).ingest, tmp_path, tmp_path / "dl", prepared)
    with_id = [split for split in ("train", "valid", "test") if any(e.id for e in read_examples(prepared, split))]
    assert [split for split in ("train", "valid", "test") if (prepared / f"{split}.id").is_file()] == with_id
    assert "train" in with_id or "valid" in with_id or "test" in with_id
