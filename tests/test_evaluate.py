"""The evaluate stage's library (s2s/evaluate.py): the served decoding's metrics, and the ones `evaluate.also` adds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from s2s import evaluate, layout, tokenizer
from s2s.config import ConfigError, EvaluateConfig, ModelConfig, RNNConfig, TokenizerConfig, parse_params
from s2s.corpus import generate_pairs
from s2s.models import build_model
from s2s.scoring import score
from s2s.tokenizer import Tokenizers
from s2s.translate import Translator


def test_also_scores_each_other_decoding_beside_the_served_one(tmp_path: Path) -> None:
    pairs = generate_pairs(300, 4)
    tokenizer.train(TokenizerConfig(vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], tmp_path / "tok")
    tok = Tokenizers.load(tmp_path / "tok")
    torch.manual_seed(0)
    vocab = tok.src.get_piece_size()
    model = build_model(ModelConfig(rnn=RNNConfig(emb_dim=16, hidden=16)), vocab, vocab)
    translator = Translator(model, tok, torch.device("cpu"))
    layout.write_prepared({"train": pairs[:10], "valid": pairs[:10], "test": pairs[:40]}, tmp_path / "prepared")
    test = pairs[:40]
    cfg = EvaluateConfig(beam_size=3, max_len_b=5, also=("greedy", "beam3", "beam2"), attention_maps=0)

    metrics = evaluate.run(cfg, translator, tmp_path / "prepared", tmp_path / "eval.json", tmp_path / "hyps.tsv")

    assert metrics["decoding"] == "beam3" and list(metrics["also"]) == ["greedy", "beam2"]  # beam3 is the served one
    greedy = translator.translate([s for s, _ in test], cfg.model_copy(update={"beam_size": 1}))
    expected = score(greedy, [t for _, t in test])
    assert {k: metrics["also"]["greedy"][k] for k in ("bleu", "chrf", "ter", "rougeL")} == {
        k: expected[k] for k in ("bleu", "chrf", "ter", "rougeL")
    }
    assert metrics["also"]["beam2"]["beam_size"] == 2 and metrics["also"]["greedy"]["beam_size"] == 1
    assert json.loads((tmp_path / "eval.json").read_text())["also"] == metrics["also"]


def test_also_accepts_greedy_and_beam_sizes_only() -> None:
    assert parse_params({"evaluate": {"also": ["greedy", "beam5"]}}).evaluate.also == ("greedy", "beam5")
    for bad in ("beam1", "beam", "sampling"):
        with pytest.raises(ConfigError, match=r"evaluate.also.0: String should match pattern"):
            parse_params({"evaluate": {"also": [bad]}})
