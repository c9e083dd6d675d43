"""Property: whatever bytes and line structure come in, ingest either succeeds with every line
accounted for (kept + dropped + moved == read) or fails with an IngestError; nothing else."""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2s.config import parse_params
from s2s.ingest import IngestError, build_splits

# Lines of arbitrary bytes, biased towards text so that some survive cleaning.
LINE = st.one_of(
    st.binary(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"a b c", b"the same line", b"", b"  ", b"\x00", b"\xff\xfe", b"x\ty", b"one two three four five"]),
).map(lambda b: b.replace(b"\n", b" "))
LINES = st.lists(LINE, max_size=25)


def _write(path: Path, lines: list[bytes], gz: bool) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    if gz:
        path = path.with_suffix(path.suffix + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(src=LINES, tgt=LINES, tsv=st.booleans(), gz=st.booleans(), dedup=st.booleans())
def test_ingest_never_crashes_and_accounts_for_every_line(
    src: list[bytes], tgt: list[bytes], tsv: bool, gz: bool, dedup: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if tsv:
            train = {
                "tsv": str(
                    _write(root / "train.tsv", [s + b"\t" + t for s, t in zip(src, tgt, strict=False)] + src[len(tgt) :], gz)
                )
            }
        else:
            train = {"src": str(_write(root / "train.en", src, gz)), "tgt": str(_write(root / "train.de", tgt, gz))}
        raw = {
            "ingest": {
                "corpus": "files",
                "files": {"train": train},
                "holdout": {"valid": 1, "test": 1},
                "clean": {"dedup": dedup},
            }
        }
        try:
            splits, stats = build_splits(parse_params(raw).ingest, root, root / "dl")
        except IngestError as err:
            if not tsv and len(src) != len(tgt):
                assert f"has {len(src)} lines" in str(err) and f"has {len(tgt)} lines" in str(err)
            return
        assert tsv or len(src) == len(tgt)
        s = stats["train"]
        assert s.read == len(src)  # a TSV has one line per source line here
        assert s.read == s.kept + sum(s.dropped.values()) + sum(s.moved.values())
        assert all(splits[name] for name in ("train", "valid", "test"))
        assert len(splits["train"]) == s.kept


GOOD = [f"sentence number {i} is here".encode() for i in range(12)]


@pytest.mark.parametrize(("tsv", "gz"), [(False, False), (False, True), (True, False), (True, True)])
def test_clean_input_in_every_format_is_ingested_whole(tsv: bool, gz: bool) -> None:
    """The cases the property above must not get by raising: clean, distinct pairs always ingest."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        targets = [line.replace(b"sentence", b"Satz") for line in GOOD]
        if tsv:
            train = {"tsv": str(_write(root / "train.tsv", [s + b"\t" + t for s, t in zip(GOOD, targets, strict=True)], gz))}
        else:
            train = {"src": str(_write(root / "train.en", GOOD, gz)), "tgt": str(_write(root / "train.de", targets, gz))}
        raw = {"ingest": {"corpus": "files", "files": {"train": train}, "holdout": {"valid": 1, "test": 1}}}
        splits, stats = build_splits(parse_params(raw).ingest, root, root / "dl")
        assert (stats["train"].read, stats["train"].kept, len(splits["valid"]), len(splits["test"])) == (12, 10, 1, 1)
        assert sorted(e.pair for e in splits["train"] + splits["valid"] + splits["test"]) == sorted(
            zip((s.decode() for s in GOOD), (t.decode() for t in targets), strict=True)
        )
