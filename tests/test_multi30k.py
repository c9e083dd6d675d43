"""The Multi30k preset reads the shared copy, verified by sha256, and keeps the benchmark splits whole."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import REPO, multi30k

from s2s.config import load_params
from s2s.ingest import build_splits

pytestmark = pytest.mark.multi30k


def test_preset_ingests_multi30k(tmp_path: Path) -> None:
    multi30k()
    params = load_params(REPO / "presets/multi30k.yaml")
    splits, stats = build_splits(params.ingest, REPO, tmp_path / "downloads")
    assert (stats["train"].read, stats["valid"].read, stats["test"].read) == (29000, 1014, 1000)
    # test_2016_flickr stays exactly as published: nothing dropped, nothing changed.
    assert len(splits["test"]) == 1000 and sum(stats["test"].dropped.values()) == 0
    assert splits["test"][0].src.startswith("A man in an orange hat")
    train = stats["train"]
    assert train.read == train.kept + sum(train.dropped.values())
    assert not (tmp_path / "downloads").exists()  # local files are read in place, never copied
