"""Model and search invariants, for every recurrent variant."""

from __future__ import annotations

import pytest
import torch

from s2s.batching import pad
from s2s.config import ModelConfig, RNNConfig, TransformerConfig
from s2s.models import Seq2Seq, build_model
from s2s.models.dropout import Dropout, dropout
from s2s.search import beam_search, greedy
from s2s.tokenizer import BOS, EOS

VOCAB = 24
RNN_VARIANTS = [f"{cell}-{attn}" for cell in ("lstm", "gru") for attn in ("none", "dot", "general", "additive")]
VARIANTS = [*RNN_VARIANTS, "transformer-sinusoidal", "transformer-learned"]
ATTENTIVE = [v for v in VARIANTS if not v.endswith("-none")]


def make(variant: str, seed: int = 0, layers: int = 1) -> Seq2Seq:
    """A small model: `cell-attention` for recurrent ones, `transformer-positions` for Transformers."""
    torch.manual_seed(seed)
    kind, option = variant.split("-")
    if kind == "transformer":
        tcfg = TransformerConfig(d_model=16, heads=2, encoder_layers=layers, decoder_layers=layers, ff=32, dropout=0.0,
                                 positions=option, max_positions=64)  # fmt: skip
        cfg = ModelConfig(arch="transformer", transformer=tcfg)
    else:
        cfg = ModelConfig(rnn=RNNConfig(cell=kind, attention=option, emb_dim=16, hidden=24, layers=layers, dropout=0.0))
    return build_model(cfg, VOCAB, VOCAB).eval()


SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
TARGETS = [[15, 16, 17], [18, 19, 20, 21], [22, 23]]


def batch(sources: list[list[int]], targets: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return pad(sources), torch.tensor([len(s) for s in sources]), pad([[BOS, *t] for t in targets])


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes(variant: str) -> None:
    model = make(variant)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    out = model(src, src_len, tgt_in)
    assert out.logits.shape == (3, 5, VOCAB)  # (B, T, V)
    if variant.endswith("-none"):
        assert out.attention is None
    else:
        assert out.attention is not None and out.attention.shape == (3, 5, 5)  # (B, T, S)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_does_not_change_any_sentence(variant: str) -> None:
    model = make(variant, layers=2)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    together = model(src, src_len, tgt_in).logits
    for i, (s, t) in enumerate(zip(SOURCES, TARGETS, strict=True)):
        alone = model(*batch([s], [t])).logits[0]
        torch.testing.assert_close(together[i, : len(t) + 1], alone, rtol=1e-5, atol=1e-5)
    # Extra padding columns on the whole batch change nothing either.
    wide = torch.cat([src, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(wide, src_len, tgt_in).logits, together, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ATTENTIVE)
def test_attention_sums_to_one_over_real_source_tokens(variant: str) -> None:
    model = make(variant)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    weights = model(src, src_len, tgt_in).attention
    assert weights is not None
    for i, n in enumerate(src_len.tolist()):
        torch.testing.assert_close(weights[i, :, :n].sum(-1), torch.ones(weights.size(1)))
        assert torch.count_nonzero(weights[i, :, n:]) == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_incremental_decoding_equals_full_recomputation(variant: str) -> None:
    model = make(variant, layers=2)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    full = model(src, src_len, tgt_in).logits
    state = model.encode(src, src_len)
    steps = []
    for t in range(tgt_in.size(1)):
        out = model.decode(tgt_in[:, t : t + 1], state)
        state = out.state
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_of_one_is_greedy(variant: str) -> None:
    model = make(variant, seed=3)
    src, src_len, _ = batch(SOURCES, TARGETS)
    g = greedy(model, src, src_len, max_len_a=2.0, max_len_b=3)
    b = beam_search(model, src, src_len, beam=1, max_len_a=2.0, max_len_b=3, alpha=0.0)
    assert [h.tokens for h in g] == [h[0].tokens for h in b]
    for gh, bh in zip(g, b, strict=True):
        assert gh.score == pytest.approx(bh[0].score, abs=1e-4)


@pytest.mark.parametrize("variant", ["lstm-general", "transformer-sinusoidal"])
def test_beam_search_returns_sorted_n_best_within_length_limit(variant: str) -> None:
    model = make(variant, seed=4)
    src, src_len, _ = batch(SOURCES, TARGETS)
    results = beam_search(model, src, src_len, beam=4, max_len_a=1.0, max_len_b=2, n_best=3)
    for hyps, n in zip(results, src_len.tolist(), strict=True):
        assert len(hyps) == 3
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert all(len(h.tokens) <= n + 2 for h in hyps)  # limit: 1.0 * n + 2 tokens
        assert all(EOS not in h.tokens and BOS not in h.tokens for h in hyps)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, src_len, beam=2, n_best=3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_memorises_a_tiny_batch_exactly(variant: str) -> None:
    model = make(variant, seed=0).train()
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    tgt_out = pad([[*t, EOS] for t in TARGETS])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0)
    for _ in range(250):
        logits = model(src, src_len, tgt_in).logits
        loss = loss_fn(logits.reshape(-1, VOCAB), tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    assert [h.tokens for h in greedy(model, src, src_len)] == TARGETS
    assert [h[0].tokens for h in beam_search(model, src, src_len, beam=3)] == TARGETS


@pytest.mark.parametrize("variant", ["lstm-general", "transformer-learned"])
def test_teacher_forcing_ratio_feeds_predictions(variant: str) -> None:
    model = make(variant)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    torch.manual_seed(0)
    forced = model(src, src_len, tgt_in, teacher_forcing=1.0).logits
    mixed = model(src, src_len, tgt_in, teacher_forcing=0.0).logits
    assert mixed.shape == forced.shape
    # The first step sees BOS either way; later steps see the model's own argmax instead of the reference.
    torch.testing.assert_close(mixed[:, 0], forced[:, 0])
    assert not torch.allclose(mixed[:, 1:], forced[:, 1:])


def test_cpu_dropout_matches_inverted_dropout() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    layer = Dropout(0.25)
    y = layer(x)
    zeroed = float((y == 0).float().mean())
    assert abs(zeroed - 0.25) < 0.005  # the configured share is dropped...
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))  # ...and survivors are scaled by 1/(1-p)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient flows through kept elements only, with the same scale
    assert torch.equal(layer.eval()(x), x)  # evaluation: identity
    assert torch.equal(dropout(x, 0.0, training=True), x)
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.0"):
        Dropout(1.0)


def test_transformer_activation_and_attention_dropout_are_separate_settings() -> None:
    cfg = TransformerConfig(d_model=16, heads=2, ff=32, dropout=0.1, attention_dropout=0.2, activation_dropout=0.3)
    model = build_model(ModelConfig(arch="transformer", transformer=cfg), VOCAB, VOCAB)
    probabilities = {m.p for m in model.modules() if isinstance(m, Dropout)}
    attention = {m.dropout for m in model.modules() if type(m).__name__ == "MultiHeadAttention"}
    assert probabilities == {0.1, 0.3} and attention == {0.2}
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())  # every dropout uses the cheaper CPU mask
