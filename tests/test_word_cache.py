"""s2s/word_cache.py: a corpus encoded a word at a time gives exactly SentencePiece's ids, and checks that it does."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from support import multi30k

from s2s import tokenizer
from s2s.config import parse_params
from s2s.tokenizer import Tokenizers
from s2s.word_cache import WordCache, flatten

# Whitespace runs, NFKC-compatibility characters (the ligature, the fraction, "¨" which NFKC turns into a space and
# a combining mark), a zero-width space, accents composed and decomposed, digits and punctuation, an empty line.
AWKWARD = ["ﬁne  ½ cup", "a ¨ b", "x\u200by z", "café cafe\u0301", "  leading and trailing  ", "", "3.5kg, 12:30!",
           "Ein Mann   in\tBlau ."]  # fmt: skip


def lines(name: str, n: int) -> list[str]:
    return gzip.decompress((multi30k() / name).read_bytes()).decode().splitlines()[:n]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizers(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizers:
    out = tmp_path_factory.mktemp(f"tok-{request.param}")
    cfg = parse_params({"tokenizer": {"model_type": request.param, "vocab_size": 600}}).tokenizer
    tokenizer.train(cfg, lines("train.en.gz", 3000), lines("train.de.gz", 3000), out)
    return Tokenizers.load(out)


def test_word_by_word_gives_sentencepiece_s_ids(tokenizers: Tokenizers) -> None:
    sentences = [*lines("val.en.gz", 1000), *AWKWARD, *lines("val.de.gz", 1000)]
    cache = WordCache(tokenizers.encode_src)
    got = [cache.encode(sentences[k : k + 300]) for k in range(0, len(sentences), 300)]  # the cache grows chunk by chunk
    ids, lengths = np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])
    expected_ids, expected_lengths = flatten(tokenizers.encode_src(sentences))
    assert lengths.tolist() == expected_lengths.tolist()
    assert ids.tolist() == expected_ids.tolist()
    assert cache.exact
    distinct = len(set(" ".join(sentences).split(" ")))
    assert len(cache.index) == distinct < sum(s.count(" ") + 1 for s in sentences) / 3  # each word encoded once


def test_past_its_limit_the_cache_starts_over_and_still_agrees(tokenizers: Tokenizers) -> None:
    sentences = lines("val.en.gz", 400)
    cache = WordCache(tokenizers.encode_src, limit=200)
    out = [cache.encode(sentences[k : k + 10]) for k in range(0, 400, 10)]  # a chunk's own words always fit
    assert len(cache.index) <= 200
    assert np.concatenate([ids for ids, _ in out]).tolist() == flatten(tokenizers.encode_src(sentences))[0].tolist()


def test_an_encoder_that_is_not_word_by_word_is_caught_and_used_whole(caplog: pytest.LogCaptureFixture) -> None:
    def whole(texts: list[str]) -> list[list[int]]:  # one id per sentence: no sum of its words' ids
        return [[len(text)] for text in texts]

    cache = WordCache(whole)
    ids, lengths = cache.encode(["a bb", "ccc"])
    assert ids.tolist() == [4, 3] and lengths.tolist() == [1, 1]
    assert not cache.exact and "differs from SentencePiece on 'a bb'" in caplog.text
    assert cache.encode(["dd e"])[0].tolist() == [4]  # whole sentences from then on


def test_nothing_in_nothing_out(tokenizers: Tokenizers, tmp_path: Path) -> None:
    ids, lengths = WordCache(tokenizers.encode_src).encode([])
    assert len(ids) == len(lengths) == 0
