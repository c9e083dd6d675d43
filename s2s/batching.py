"""Token-bucketed batches over sentences that were tokenized once, up front.

Sentences of similar length go together so that little compute is spent on
padding, and a batch holds about `batch_tokens` tokens (padding included)
whatever the sentence lengths, which keeps memory and step time steady.
"""

from __future__ import annotations

import copy
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from s2s.encoded import EncodedSide, open_split
from s2s.errors import S2SError
from s2s.layout import Example, read_examples
from s2s.tokenizer import BOS, EOS, PAD, Tokenizers

log = logging.getLogger(__name__)


class DataError(S2SError, ValueError):
    pass


@dataclass(frozen=True)
class Batch:
    src: torch.Tensor  # (B, S) source ids, PAD-padded, no BOS/EOS
    src_len: torch.Tensor  # (B,) true source lengths
    tgt_in: torch.Tensor  # (B, T) BOS + target ids
    tgt_out: torch.Tensor  # (B, T) target ids + EOS
    index: torch.Tensor  # (B,) positions of these sentences in the dataset

    @property
    def n_tgt_tokens(self) -> int:
        return int((self.tgt_out != PAD).sum())

    @property
    def n_src_tokens(self) -> int:
        return int(self.src_len.sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.src, self.src_len, self.tgt_in, self.tgt_out, self.index)))


def pad(seqs: list[list[int]], value: int = PAD) -> torch.Tensor:
    """(B, max_len) long tensor, right-padded."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), max(width, 1)), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return out


Indices = npt.NDArray[np.int64]  # sentence positions: one batch's, or one epoch's order


def bucket_indices(lengths: list[int] | npt.NDArray[np.integer[Any]], batch_tokens: int, shuffle: bool,
                   seed: int = 0) -> list[Indices]:  # fmt: skip
    """Group sentence indices into batches of at most `batch_tokens` padded tokens.

    Sorting happens inside shuffled windows of ~100 batches, so batches are length-homogeneous but their composition
    changes from epoch to epoch. Positions are numpy arrays (8 bytes a sentence, where Python lists took ~36: a corpus
    of millions would hold hundreds of MB in them); the shuffles are Python's `random` on those arrays, the same
    swaps as on lists, so a seed gives the batches it always gave.
    """
    rng = random.Random(seed)
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.arange(len(sizes), dtype=np.int64)
    if shuffle:
        rng.shuffle(order)  # type: ignore[arg-type]  # an ndarray is a mutable sequence to random.shuffle
    window = max(1, 100 * batch_tokens // max(1, int(sizes.sum()) // max(1, len(sizes))))
    batches: list[Indices] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort(sizes[chunk], kind="stable")]  # stable, as sorted() is: ties keep their order
        first = 0
        # Ascending lengths: a batch's longest sentence is the last added, so it is full when that one, times the
        # sentences it would then hold, passes the budget.
        for k, longest in enumerate(sizes[chunk].tolist()):
            if k > first and longest * (k - first + 1) > batch_tokens:
                batches.append(chunk[first:k])
                first = k
        if first < len(chunk):
            batches.append(chunk[first:])
    if shuffle:
        rng.shuffle(batches)
    return batches


def make_batch(src: list[list[int]], tgt: list[list[int]], index: list[int] | Indices) -> Batch:
    return Batch(
        src=pad(src),
        src_len=torch.tensor([len(s) for s in src], dtype=torch.long),
        tgt_in=pad([[BOS, *t] for t in tgt]),
        tgt_out=pad([[*t, EOS] for t in tgt]),
        index=torch.as_tensor(index, dtype=torch.long),
    )


class ParallelData:
    """A split's pairs as token ids, for batching: the items at `rows` of a source and a target `EncodedSide`
    (memory-mapped files of the encode stage, or arrays in memory), each source cut to `max_source` ids if given.

    Only the lengths are held as arrays of their own; a batch reads its few rows when it is built, so memory does not
    grow with the corpus beyond 16 bytes a pair.
    """

    def __init__(
        self, src: EncodedSide, tgt: EncodedSide, rows: npt.NDArray[np.int32] | None = None, max_source: int | None = None
    ) -> None:
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
        self.src, self.tgt, self.max_source = src, tgt, max_source
        # int32: half the memory of int64 for a corpus of millions; no corpus has 2**31 items, no item 2**31 subwords.
        self.rows = np.arange(len(src), dtype=np.int32) if rows is None else rows
        src_len = src.lengths()[self.rows].astype(np.int32)
        self.src_len = src_len if max_source is None else np.minimum(src_len, max_source)  # (N,) after any cut
        self.tgt_len = tgt.lengths()[self.rows].astype(np.int32)  # (N,)

    @classmethod
    def from_lists(cls, src: list[list[int]], tgt: list[list[int]]) -> ParallelData:
        """Pairs tokenized in memory (tests, small benchmarks)."""
        return cls(EncodedSide.from_lists(src), EncodedSide.from_lists(tgt))

    def within(self, max_tokens: int, truncate_source: bool = False) -> tuple[ParallelData, int]:
        """The pairs training takes, and how many it leaves out: both sides non-empty and at most `max_tokens`
        subwords, after cutting a long source to `max_tokens` when `truncate_source`."""
        src_len = self.src_len if not truncate_source else np.minimum(self.src_len, max_tokens)
        keep = (src_len > 0) & (src_len <= max_tokens) & (self.tgt_len > 0) & (self.tgt_len <= max_tokens)
        kept = copy.copy(self)  # the same files; its rows and lengths are the kept ones' (not recomputed from offsets)
        kept.rows, kept.src_len, kept.tgt_len = self.rows[keep], src_len[keep], self.tgt_len[keep]
        kept.max_source = max_tokens if truncate_source else self.max_source
        return kept, int(len(keep) - keep.sum())

    def __len__(self) -> int:
        return len(self.rows)

    def lengths(self) -> npt.NDArray[np.int32]:
        """(N,) padded length of each pair in a batch: the longer of source and target (+ BOS or EOS)."""
        return np.maximum(self.src_len, self.tgt_len + 1)

    def batches(self, batch_tokens: int, shuffle: bool, seed: int = 0) -> list[Batch]:
        return [self.batch(idx) for idx in bucket_indices(self.lengths(), batch_tokens, shuffle, seed)]

    def pair(self, position: int) -> tuple[list[int], list[int]]:
        """The ids of the pair at `position` (of `rows`), the source cut as training sees it."""
        row = int(self.rows[position])
        src: list[int] = self.src.item(row)[: self.max_source].tolist()
        tgt: list[int] = self.tgt.item(row).tolist()
        return src, tgt

    def batch(self, index: list[int] | Indices) -> Batch:
        """The sentences at `index` as one padded batch."""
        pairs = [self.pair(i) for i in index]
        return make_batch([s for s, _ in pairs], [t for _, t in pairs], index)

    def target_tokens(self, index: list[int] | Indices) -> int:
        """Loss-bearing target tokens (EOS included) of the sentences at `index`, as `Batch.n_tgt_tokens` counts them."""
        return int(self.tgt_len[index].sum()) + len(index)

    def source_tokens(self, index: list[int] | Indices) -> int:
        return int(self.src_len[index].sum())

    def count_batches(self, batch_tokens: int) -> int:
        """Batches in one epoch (shuffled epochs differ by a batch or two); cheap, no tensors built."""
        return len(bucket_indices(self.lengths(), batch_tokens, shuffle=False))


def encode_split(
    tok: Tokenizers, prepared: Path, split: str, max_tokens: int, truncate_source: bool = False
) -> tuple[ParallelData, list[Example], int]:
    """Tokenize a split in memory (what the encode stage's files hold, for small data); pairs longer than
    `max_tokens` subwords are left out, as `ParallelData.within` decides. Returns the data, its items as text, and the
    count left out."""
    examples = read_examples(prepared, split)
    everything = ParallelData.from_lists(tok.encode_src([e.src for e in examples]), tok.encode_tgt([e.tgt for e in examples]))
    data, dropped = everything.within(max_tokens, truncate_source)
    return data, [examples[int(i)] for i in data.rows], dropped


@dataclass(frozen=True)
class TrainingData:
    """The training and validation splits, tokenized once; `too_long` training pairs were left out."""

    train: ParallelData
    valid: ParallelData  # for the validation loss: pairs within train.max_tokens, as trained
    valid_examples: list[Example]  # every validation item, for validation scores (a benchmark is scored whole)
    too_long: int

    @classmethod
    def load(
        cls, tok: Tokenizers, prepared: Path, max_tokens: int, truncate_source: bool = False, encoded: Path | None = None
    ) -> TrainingData:
        """From the encode stage's files in `encoded` (mapped, not loaded), or tokenized here from `prepared` without
        them; the validation items' texts come from `prepared` either way."""
        if encoded is None:
            train, _, too_long = encode_split(tok, prepared, "train", max_tokens, truncate_source)
            valid, _, _ = encode_split(tok, prepared, "valid", max_tokens, truncate_source)
        else:
            train, too_long = ParallelData(*open_split(encoded, "train")).within(max_tokens, truncate_source)
            valid, _ = ParallelData(*open_split(encoded, "valid")).within(max_tokens, truncate_source)
        if len(train) == 0:
            raise DataError(f"no training pairs left: all {too_long} exceed train.max_tokens={max_tokens}")
        if too_long:
            log.warning("left out %d training pairs longer than train.max_tokens=%d subwords", too_long, max_tokens)
        return cls(train, valid, read_examples(prepared, "valid"), too_long)
