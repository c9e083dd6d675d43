"""s2s/tokenizer.py: SentencePiece models for each side, and text that comes back as it went in."""

from __future__ import annotations

from pathlib import Path

from s2s import layout, tokenizer
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


def test_a_multi_line_input_is_joined_as_the_prepared_documents_were(tmp_path: Path) -> None:
    bodies = [f"Hi all ¶ meeting {i} moved to Tuesday ¶ Thanks ¶ Ann" for i in range(200)]
    subjects = [f"meeting {i}" for i in range(200)]
    layout.write_prepared({"train": list(zip(bodies, subjects, strict=True))}, tmp_path / "prepared", newline="¶")
    assert layout.read_newline(tmp_path / "prepared") == "¶"
    assert layout.read_newline(tmp_path) is None  # texts without breaks record none
    cfg = TokenizerConfig(vocab_size=60)
    tokenizer.train(cfg, bodies, subjects, tmp_path / "tok", layout.read_newline(tmp_path / "prepared"))
    tok = Tokenizers.load(tmp_path / "tok")
    raw = "Hi all\r\n\n  meeting 3 moved to Tuesday\nThanks\nAnn\n"
    assert tok.encode_src([raw]) == tok.encode_src([bodies[3]])  # what the model was trained on, whatever the breaks
    assert tok.src.piece_to_id("▁¶") in tok.encode_src([raw])[0]
    tokenizer.train(cfg, bodies, subjects, tmp_path / "plain")  # no separator recorded: inputs are taken as they are
    plain = Tokenizers.load(tmp_path / "plain")
    assert plain.newline is None and plain.encode_src([raw]) == plain.src.encode([raw])
