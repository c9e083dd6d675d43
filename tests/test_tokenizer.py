"""s2s/tokenizer.py: SentencePiece models for each side, and text that comes back as it went in."""

from __future__ import annotations

from pathlib import Path

from s2s import tokenizer
from s2s.config import TokenizerConfig
from s2s.corpus import generate_pairs
from s2s.tokenizer import BOS, EOS, PAD, Tokenizers


def test_encode_decode_round_trip(tmp_path: Path) -> None:
    pairs = generate_pairs(300, 5)
    tokenizer.train(TokenizerConfig(vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], tmp_path / "tok")
    tok = Tokenizers.load(tmp_path / "tok")
    targets = [t for _, t in pairs[:50]]
    ids = tok.encode_tgt(targets)
    assert tok.decode_tgt(ids) == targets  # the same text back, German umlauts included
    assert all(len(s) > 0 and not {PAD, BOS, EOS} & set(s) for s in ids)  # no special ids inside a sentence
    assert tok.encode_src(["ein Hund"]) != [] and len(tok.encode_src(["a", "b c"])) == 2
