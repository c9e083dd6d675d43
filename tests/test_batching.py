"""s2s/batching.py: token-bucketed batches and the splits tokenized once."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from s2s import layout, tokenizer
from s2s.batching import DataError, ParallelData, TrainingData, bucket_indices, encode_split
from s2s.config import TokenizerConfig
from s2s.corpus import generate_pairs
from s2s.tokenizer import BOS, EOS, PAD, Tokenizers

_RNG = random.Random(7)
LENGTHS = [_RNG.randint(1, 40) for _ in range(500)]  # one generator: lengths that differ, and ties among them


def batches_of(lengths: list[int], batch_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    return [batch.tolist() for batch in bucket_indices(lengths, batch_tokens, shuffle, seed)]


def list_bucket_indices(lengths: list[int], batch_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """bucket_indices as it was until 2026-12-03, on Python lists: the batches every earlier run trained on."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    if shuffle:
        rng.shuffle(order)
    window = max(1, 100 * batch_tokens // max(1, sum(lengths) // max(1, len(lengths))))
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        current: list[int] = []
        longest = 0
        for i in chunk:
            longest_if_added = max(longest, lengths[i])
            if current and longest_if_added * (len(current) + 1) > batch_tokens:
                batches.append(current)
                current, longest_if_added = [], lengths[i]
            current.append(i)
            longest = longest_if_added
        if current:
            batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@pytest.mark.parametrize("shuffle", [True, False])
def test_bucket_indices_cover_each_sentence_once_within_the_token_budget(shuffle: bool) -> None:
    batches = batches_of(LENGTHS, 200, shuffle=shuffle, seed=3)
    assert sorted(i for batch in batches for i in batch) == list(range(len(LENGTHS)))
    for batch in batches:  # padded tokens: the longest sentence times the batch's size
        assert max(LENGTHS[i] for i in batch) * len(batch) <= 200
    assert batches_of(LENGTHS, 200, shuffle=shuffle, seed=3) == batches  # the same seed, the same batches


@pytest.mark.parametrize(("size", "batch_tokens", "seed"), [(500, 200, 3), (5000, 2000, 1001), (20000, 600, 7), (3, 20, 0)])
def test_bucket_indices_on_arrays_plan_the_batches_the_list_version_did(size: int, batch_tokens: int, seed: int) -> None:
    """Same seed, same data: the same batches, in the same order, as before positions became numpy arrays (ties in
    length included: many sentences share a length)."""
    rng = random.Random(size)
    lengths = [rng.randint(1, 60) for _ in range(size)]
    for shuffle in (True, False):
        assert batches_of(lengths, batch_tokens, shuffle, seed) == list_bucket_indices(lengths, batch_tokens, shuffle, seed)


def test_shuffled_epochs_differ_and_a_sentence_over_the_budget_gets_a_batch_of_its_own() -> None:
    assert batches_of(LENGTHS, 200, shuffle=True, seed=1) != batches_of(LENGTHS, 200, shuffle=True, seed=2)
    assert batches_of([50, 3, 3], 20, shuffle=False) == [[1, 2], [0]]


def test_parallel_data_batches_pad_and_count_as_the_loss_does() -> None:
    data = ParallelData.from_lists([[5, 6, 7], [8]], [[9], [10, 11]])
    assert data.lengths().tolist() == [3, 3]  # the longer of source and target + BOS/EOS
    batch = data.batch([0, 1])
    assert batch.src.tolist() == [[5, 6, 7], [8, PAD, PAD]] and batch.src_len.tolist() == [3, 1]
    assert batch.tgt_in.tolist() == [[BOS, 9, PAD], [BOS, 10, 11]] and batch.tgt_out.tolist() == [[9, EOS, PAD], [10, 11, EOS]]
    assert data.target_tokens([0, 1]) == batch.n_tgt_tokens == 5 and data.source_tokens([0, 1]) == 4
    with pytest.raises(ValueError, match="2 source but 1 target sentences"):
        ParallelData.from_lists([[1], [2]], [[3]])


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizers, Path]:
    root = tmp_path_factory.mktemp("batching")
    pairs = generate_pairs(300, 2)
    tokenizer.train(TokenizerConfig(vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], root / "tok")
    layout.write_prepared({"train": pairs, "valid": pairs[:20], "test": pairs[:20]}, root / "prepared")
    return Tokenizers.load(root / "tok"), root / "prepared"


def test_encode_split_leaves_out_and_counts_pairs_over_max_tokens(split: tuple[Tokenizers, Path]) -> None:
    tok, prepared = split
    everything, pairs, dropped = encode_split(tok, prepared, "train", 1000)
    assert (len(everything), dropped, len(pairs)) == (300, 0, 300)
    limit = sorted(max(len(s), len(t)) for s, t in map(everything.pair, range(len(everything))))[150]
    kept, kept_pairs, dropped = encode_split(tok, prepared, "train", limit)
    assert len(kept) + dropped == 300 and 0 < dropped < 300 and len(kept_pairs) == len(kept)
    assert all(len(s) <= limit and len(t) <= limit for s, t in map(kept.pair, range(len(kept))))
    # Each kept item is the pair it was: its text encodes to its ids.
    assert [kept.pair(i) for i in range(3)] == [(tok.encode_src([e.src])[0], tok.encode_tgt([e.tgt])[0]) for e in kept_pairs[:3]]


def test_truncated_sources_are_cut_and_keep_their_pair(split: tuple[Tokenizers, Path]) -> None:
    tok, prepared = split
    everything, _, _ = encode_split(tok, prepared, "train", 1000)
    limit = sorted(len(everything.pair(i)[0]) for i in range(len(everything)))[150]
    cut, _, dropped = encode_split(tok, prepared, "train", max(limit, 30), truncate_source=True)
    long_targets = sum(len(everything.pair(i)[1]) > max(limit, 30) for i in range(len(everything)))
    assert dropped == long_targets and len(cut) == 300 - long_targets
    for i in range(len(cut)):
        src, _ = cut.pair(i)
        assert len(src) <= max(limit, 30) and cut.lengths()[i] == max(len(src), len(cut.pair(i)[1]) + 1)


def test_training_data_refuses_a_run_with_nothing_left(split: tuple[Tokenizers, Path]) -> None:
    tok, prepared = split
    data = TrainingData.load(tok, prepared, 1000)
    assert (len(data.train), len(data.valid), len(data.valid_examples), data.too_long) == (300, 20, 20, 0)
    with pytest.raises(DataError, match=r"no training pairs left: all 300 exceed train.max_tokens=2"):
        TrainingData.load(tok, prepared, 2)
