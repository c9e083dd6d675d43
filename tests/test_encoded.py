"""s2s/encoded.py and the encode stage: splits tokenized once, memory-mapped, checked, and trained on as before."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from support import TINY_PARAMS, deep_merge

from s2s import encoded, ingest, layout, tokenizer
from s2s.batching import ParallelData, encode_split
from s2s.config import parse_params
from s2s.encoded import EncodedDataError, bin_file, idx_file, open_split
from s2s.tokenizer import Tokenizers
from s2s.train import Trainer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared data, a tokenizer and the encode stage's output, made by the stage's own command."""
    root = tmp_path_factory.mktemp("encoded")
    params = parse_params(TINY_PARAMS)
    ingest.run(params.ingest, root, root / layout.PREPARED_DIR, root / layout.INGEST_STATS)
    pairs = layout.read_prepared(root / layout.PREPARED_DIR, "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], root / layout.TOKENIZER_DIR)
    (root / layout.PARAMS_FILE).write_text(yaml.safe_dump(params.model_dump(mode="json")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", layout.stage("encode").module], cwd=root, env=env, check=True, timeout=120,
                   capture_output=True)  # fmt: skip
    return root


def test_each_item_holds_the_ids_its_text_encodes_to(workspace: Path) -> None:
    tok = Tokenizers.load(workspace / layout.TOKENIZER_DIR)
    meta = encoded.read_meta(workspace / layout.ENCODED_DIR)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.src.get_piece_size()
    for split in layout.SPLITS:
        examples = layout.read_examples(workspace / layout.PREPARED_DIR, split)
        src, tgt = open_split(workspace / layout.ENCODED_DIR, split)
        assert len(src) == len(tgt) == len(examples) == meta["splits"][split]["items"]
        assert [src.item(i).tolist() for i in range(len(src))] == tok.encode_src([e.src for e in examples])
        assert [tgt.item(i).tolist() for i in range(len(tgt))] == tok.encode_tgt([e.tgt for e in examples])
        assert isinstance(src.ids.base, memoryview) and isinstance(src.ids.base.obj, mmap.mmap)  # mapped, not read


def test_ids_past_uint16_are_stored_as_int32() -> None:
    assert encoded.id_dtype(65536) == np.uint16 and encoded.id_dtype(65537) == np.int32


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "delete"])
def test_a_damaged_file_is_an_error_naming_it(workspace: Path, tmp_path: Path, damage: str) -> None:
    copy = tmp_path / "encoded"
    subprocess.run(["cp", "-r", str(workspace / layout.ENCODED_DIR), str(copy)], check=True, timeout=30)
    path = bin_file(copy, "train", "tgt") if damage != "delete" else idx_file(copy, "valid", "src")
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:-2])
    elif damage == "corrupt":
        path.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    else:
        path.unlink()
    expected = {"truncate": "bytes, .* expected \\(truncated\\?\\)", "corrupt": "sha256 .* \\(corrupt\\)", "delete": "missing"}
    split = "valid" if damage == "delete" else "train"
    with pytest.raises(EncodedDataError, match=f"{path}: .*{expected[damage]}.*rerun the encode stage"):
        open_split(copy, split)


def test_no_encoded_data_says_which_stage_makes_it(tmp_path: Path) -> None:
    with pytest.raises(EncodedDataError, match=f"{tmp_path / 'meta.json'}: encoded data not found; run the encode stage first"):
        open_split(tmp_path, "train")


@pytest.mark.parametrize("long_sources", ["drop", "truncate"])
def test_training_on_the_encoded_files_takes_the_batches_and_losses_of_training_on_the_texts(
    workspace: Path, long_sources: str
) -> None:
    """The same seed and data: the same pairs left out, the same batches in the same order, the same first losses."""
    over = {"train": {"max_tokens": 12, "long_sources": long_sources, "batch_tokens": 300}}
    params = parse_params(deep_merge(TINY_PARAMS, over))
    prepared, tok = workspace / layout.PREPARED_DIR, workspace / layout.TOKENIZER_DIR
    runs = []
    for source in (None, workspace / layout.ENCODED_DIR):
        trainer = Trainer(params.train, params.model, params.evaluate, prepared, tok, encoded=source)
        batches = [[b.tolist() for b in trainer.epoch_batches(epoch)] for epoch in (1, 2)]
        losses = []
        for step, index in enumerate(batches[0][:3], start=1):
            before = trainer.state.loss_sum
            trainer.train_step(index, 1, step)
            losses.append(trainer.state.loss_sum - before)
        runs.append((trainer.data.too_long, len(trainer.train_data), trainer.steps_per_epoch, batches, losses))
    texts, files = runs
    assert texts[0] > 0  # max_tokens 12 leaves pairs out (drop) or cuts sources (truncate): the rules are exercised
    assert texts == files


def test_encode_split_and_the_files_agree_on_what_training_takes(workspace: Path) -> None:
    tok = Tokenizers.load(workspace / layout.TOKENIZER_DIR)
    in_memory, _, dropped = encode_split(tok, workspace / layout.PREPARED_DIR, "train", 10, truncate_source=True)
    mapped, dropped_too = ParallelData(*open_split(workspace / layout.ENCODED_DIR, "train")).within(10, True)
    assert (dropped, in_memory.lengths().tolist()) == (dropped_too, mapped.lengths().tolist())
    assert [in_memory.pair(i) for i in range(0, len(mapped), 7)] == [mapped.pair(i) for i in range(0, len(mapped), 7)]
