"""Translator: text in, text out, in input order, with n-best lists and attention."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2s import tokenizer
from s2s.config import EvaluateConfig, ModelConfig, RNNConfig, TokenizerConfig, TransformerConfig
from s2s.corpus import generate_pairs
from s2s.models import build_model
from s2s.tokenizer import Tokenizers
from s2s.translate import Translator

SOURCES = [
    "We saw a big dog yesterday.",
    "",
    "They sold the three hundred and forty-two old books at the market in nineteen eighty-seven.",
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> Tokenizers:
    pairs = generate_pairs(800, 5)
    out = tmp_path_factory.mktemp("tok")
    tokenizer.train(TokenizerConfig(model_type="bpe", vocab_size=200), [s for s, _ in pairs], [t for _, t in pairs], out)
    return Tokenizers.load(out)


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(rnn=RNNConfig(emb_dim=16, hidden=16, decoder="bahdanau")),
        ModelConfig(
            arch="transformer", transformer=TransformerConfig(d_model=16, heads=2, encoder_layers=1, decoder_layers=1, ff=32)
        ),
    ],
    ids=["rnn", "transformer"],
)
def test_translate_nbest_and_attention(tokenizers: Tokenizers, cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    vocab = tokenizers.src.get_piece_size()
    translator = Translator(build_model(cfg, vocab, vocab), tokenizers, torch.device("cpu"))
    beam = EvaluateConfig(beam_size=4, batch_size=2, max_len_b=5)
    best = translator.translate(SOURCES, beam)
    nbest = translator.translate_nbest(SOURCES, 3, beam)
    assert len(best) == len(nbest) == 3
    assert all(len(hyps) == 3 for hyps in nbest)
    assert [hyps[0] for hyps in nbest] == best  # the head of the n-best list is the beam's answer
    # Order does not depend on batching: one at a time gives the same outputs.
    assert [translator.translate([s], beam)[0] for s in SOURCES] == best
    with_attention = translator.translate_with_attention(SOURCES[:1], EvaluateConfig())
    [t] = with_attention
    assert t.text == translator.translate(SOURCES[:1], EvaluateConfig())[0]
    assert t.attention is not None and len(t.attention) == len(t.tokens) + 1
    assert all(len(row) == len(t.source_tokens) for row in t.attention)


def test_heatmap_file(tokenizers: Tokenizers, tmp_path: Path) -> None:
    from s2s.plots import attention_heatmap

    torch.manual_seed(0)
    vocab = tokenizers.src.get_piece_size()
    translator = Translator(
        build_model(ModelConfig(rnn=RNNConfig(emb_dim=8, hidden=8)), vocab, vocab), tokenizers, torch.device("cpu")
    )
    [t] = translator.translate_with_attention(SOURCES[:1])
    path = attention_heatmap(t, tmp_path / "map.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_attention = build_model(ModelConfig(rnn=RNNConfig(emb_dim=8, hidden=8, decoder="sutskever")), vocab, vocab)
    [plain] = Translator(no_attention, tokenizers, torch.device("cpu")).translate_with_attention(SOURCES[:1])
    with pytest.raises(ValueError, match="no attention to draw"):
        attention_heatmap(plain, tmp_path / "none.png")
