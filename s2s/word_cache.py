"""A corpus encoded a word at a time, each distinct word once.

SentencePiece cuts its input at whitespace before it segments (`split_by_whitespace`, its default, which the
tokenizer stage keeps), and every word gets the same "▁" in front whether it starts the sentence (the dummy prefix)
or follows a space. So a sentence's ids are its words' ids laid end to end, and a corpus has far fewer distinct
words than words: Multi30k's 29,000 English training sentences hold 345,022 words, 15,457 of them distinct.
`WordCache` encodes each new word once (SentencePiece, in one batch per chunk) and builds every sentence by
gathering from a flat array of the words' ids.

It checks itself on a sample: 16 sentences of every chunk are also encoded whole by SentencePiece, and on any
difference (a normaliser rule that spans words, say) it warns and encodes whole sentences from then on (the chunks
before stay as they were). tests/test_word_cache.py holds it to SentencePiece on every sentence of its corpora.
Memory is bounded: past `limit` distinct words the cache starts over (a chunk's own words always fit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import chain, repeat
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]
Encode = Callable[[list[str]], list[list[int]]]


def flatten(items: list[list[int]]) -> tuple[Ids, Ids]:
    """Lists of ids as (all ids end to end, each item's length)."""
    lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    return np.fromiter(chain.from_iterable(items), dtype=np.int64, count=int(lengths.sum())), lengths


class WordCache:
    """`encode(sentences)` as `encode_whole` gives it, from each distinct word's ids (see the module docstring)."""

    def __init__(self, encode_whole: Encode, limit: int = 1 << 20, checks: int = 16) -> None:
        self.encode_whole = encode_whole
        self.limit = limit
        self.checks = checks
        self.exact = True  # False once a check failed: whole sentences from then on
        self._reset()

    def _reset(self) -> None:
        self.index: dict[str, int] = {}
        self.pieces: Ids = np.zeros(1 << 16, dtype=np.int64)  # every cached word's ids, end to end
        self.starts: Ids = np.zeros(1 << 12, dtype=np.int64)  # word index -> its first id in `pieces`
        self.lengths: Ids = np.zeros(1 << 12, dtype=np.int64)
        self.used = 0  # of `pieces`

    def encode(self, sentences: list[str]) -> tuple[Ids, Ids]:
        """The sentences' ids end to end, and each sentence's length."""
        if not self.exact or not sentences:
            return flatten(self.encode_whole(sentences))
        words = " ".join(sentences).split(" ")  # a sentence with n spaces has n + 1 words (some maybe empty)
        per_sentence = np.fromiter((s.count(" ") + 1 for s in sentences), dtype=np.int64, count=len(sentences))
        word_ids = self._lookup(words)  # (W,)
        lengths = self.lengths[word_ids]  # (W,) ids per word
        ends = np.cumsum(lengths)
        # Position of every output id in `pieces`: its word's start, plus its place inside the word.
        positions = np.repeat(self.starts[word_ids] - (ends - lengths), lengths) + np.arange(int(ends[-1]) if len(ends) else 0)
        ids = self.pieces[positions]
        first_words = np.zeros(len(sentences), dtype=np.int64)
        np.cumsum(per_sentence[:-1], out=first_words[1:])
        sentence_lengths: Ids = np.add.reduceat(lengths, first_words)  # each sentence has a word: indices increase
        if not self._agrees(sentences, ids, sentence_lengths):
            return flatten(self.encode_whole(sentences))
        return ids, sentence_lengths

    def _lookup(self, words: list[str]) -> Ids:
        """Each word's index in the cache, adding the words it does not hold yet (one pass when it holds them all)."""
        word_ids = np.fromiter(map(self.index.get, words, repeat(-1)), dtype=np.int64, count=len(words))
        missing = np.flatnonzero(word_ids < 0).tolist()
        if not missing:
            return word_ids
        new = list(dict.fromkeys(words[i] for i in missing))
        if len(self.index) + len(new) > self.limit:
            self._reset()
            new = list(dict.fromkeys(words))
            missing = list(range(len(words)))
        self._add(new)
        index = self.index
        word_ids[missing] = [index[words[i]] for i in missing]
        return word_ids

    def _add(self, words: list[str]) -> None:
        encoded = self.encode_whole(words)
        ids, lengths = flatten(encoded)
        first = len(self.index)
        self.starts = _fit(self.starts, first + len(words))
        self.lengths = _fit(self.lengths, first + len(words))
        self.pieces = _fit(self.pieces, self.used + len(ids))
        self.starts[first : first + len(words)] = self.used + np.cumsum(lengths) - lengths
        self.lengths[first : first + len(words)] = lengths
        self.pieces[self.used : self.used + len(ids)] = ids
        self.used += len(ids)
        self.index.update(zip(words, range(first, first + len(words)), strict=True))

    def _agrees(self, sentences: list[str], ids: Ids, lengths: Ids) -> bool:
        """Whether a spread of the sentences encodes whole to what the cache gave; if not, it stops being used."""
        picks = np.unique(np.linspace(0, len(sentences) - 1, min(self.checks, len(sentences))).astype(np.int64)).tolist()
        starts = np.cumsum(lengths) - lengths
        whole = self.encode_whole([sentences[i] for i in picks])
        for i, expected in zip(picks, whole, strict=True):
            if ids[starts[i] : starts[i] + lengths[i]].tolist() != expected:
                log.warning("encoding word by word differs from SentencePiece on %r: encoding whole sentences from here on",
                            sentences[i][:200])  # fmt: skip
                self.exact = False
                return False
        return True


def _fit(array: npt.NDArray[Any], size: int) -> npt.NDArray[Any]:
    """`array`, grown (doubling) to hold at least `size` entries."""
    if size <= len(array):
        return array
    grown = np.zeros(max(size, 2 * len(array)), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
