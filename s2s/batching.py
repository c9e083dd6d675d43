"""Token-bucketed batches over sentences that were tokenized once, up front.

Sentences of similar length go together so that little compute is spent on
padding, and a batch holds about `batch_tokens` tokens (padding included)
whatever the sentence lengths, which keeps memory and step time steady.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

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


def bucket_indices(lengths: list[int], batch_tokens: int, shuffle: bool, seed: int = 0) -> list[list[int]]:
    """Group sentence indices into batches of at most `batch_tokens` padded tokens.

    Sorting happens inside shuffled windows of ~100 batches, so batches are
    length-homogeneous but their composition changes from epoch to epoch.
    """
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


def make_batch(src: list[list[int]], tgt: list[list[int]], index: list[int]) -> Batch:
    return Batch(
        src=pad(src),
        src_len=torch.tensor([len(s) for s in src], dtype=torch.long),
        tgt_in=pad([[BOS, *t] for t in tgt]),
        tgt_out=pad([[*t, EOS] for t in tgt]),
        index=torch.tensor(index, dtype=torch.long),
    )


class ParallelData:
    """Token ids of one split, kept in memory; cheap to re-batch every epoch."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]]) -> None:
        if len(src) != len(tgt):
            raise ValueError(f"{len(src)} source but {len(tgt)} target sentences")
        self.src, self.tgt = src, tgt

    def __len__(self) -> int:
        return len(self.src)

    def lengths(self) -> list[int]:
        """Padded length of each pair in a batch: the longer of source and target (+ BOS or EOS)."""
        return [max(len(s), len(t) + 1) for s, t in zip(self.src, self.tgt, strict=True)]

    def batches(self, batch_tokens: int, shuffle: bool, seed: int = 0) -> list[Batch]:
        return [self.batch(idx) for idx in bucket_indices(self.lengths(), batch_tokens, shuffle, seed)]

    def batch(self, index: list[int]) -> Batch:
        """The sentences at `index` as one padded batch."""
        return make_batch([self.src[i] for i in index], [self.tgt[i] for i in index], index)

    def target_tokens(self, index: list[int]) -> int:
        """Loss-bearing target tokens (EOS included) of the sentences at `index`, as `Batch.n_tgt_tokens` counts them."""
        return sum(len(self.tgt[i]) + 1 for i in index)

    def source_tokens(self, index: list[int]) -> int:
        return sum(len(self.src[i]) for i in index)

    def count_batches(self, batch_tokens: int) -> int:
        """Batches in one epoch (shuffled epochs differ by a batch or two); cheap, no tensors built."""
        return len(bucket_indices(self.lengths(), batch_tokens, shuffle=False))


def encode_split(
    tok: Tokenizers, prepared: Path, split: str, max_tokens: int, truncate_source: bool = False
) -> tuple[ParallelData, list[Example], int]:
    """Tokenize a split once; pairs longer than `max_tokens` subwords are left out of training, and counted.

    With `truncate_source`, a long source is cut to `max_tokens` instead (documents: the start of an email says most
    about its subject); a long target still leaves the pair out. Returns the data, its items as text, and the count
    left out.
    """
    examples = read_examples(prepared, split)
    src = tok.encode_src([e.src for e in examples])
    tgt = tok.encode_tgt([e.tgt for e in examples])
    if truncate_source:
        src = [s[:max_tokens] for s in src]
    keep = [i for i in range(len(examples)) if 0 < len(src[i]) <= max_tokens and 0 < len(tgt[i]) <= max_tokens]
    dropped = len(examples) - len(keep)
    return ParallelData([src[i] for i in keep], [tgt[i] for i in keep]), [examples[i] for i in keep], dropped


@dataclass(frozen=True)
class TrainingData:
    """The training and validation splits, tokenized once; `too_long` training pairs were left out."""

    train: ParallelData
    valid: ParallelData  # for the validation loss: pairs within train.max_tokens, as trained
    valid_examples: list[Example]  # every validation item, for validation scores (a benchmark is scored whole)
    too_long: int

    @classmethod
    def load(cls, tok: Tokenizers, prepared: Path, max_tokens: int, truncate_source: bool = False) -> TrainingData:
        train, _, too_long = encode_split(tok, prepared, "train", max_tokens, truncate_source)
        valid, _, _ = encode_split(tok, prepared, "valid", max_tokens, truncate_source)
        if len(train) == 0:
            raise DataError(f"no training pairs left: all {too_long} exceed train.max_tokens={max_tokens}")
        if too_long:
            log.warning("left out %d training pairs longer than train.max_tokens=%d subwords", too_long, max_tokens)
        return cls(train, valid, read_examples(prepared, "valid"), too_long)
