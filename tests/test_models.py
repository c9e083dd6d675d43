"""Model and search invariants, for every recurrent variant."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import get_args

import pytest
import torch

from s2s import tokenizer
from s2s.batching import ParallelData, pad
from s2s.config import ConfigError, ModelConfig, RNNConfig, TokenizerConfig, TransformerConfig, parse_params
from s2s.corpus import generate_pairs
from s2s.models import Seq2Seq, build_model
from s2s.models.copy import CopySeq2Seq
from s2s.models.dropout import Dropout, dropout
from s2s.models.rnn import Bridge, reverse_padded
from s2s.models.rnn_decoders import DECODERS
from s2s.scoring import score
from s2s.search import beam_search, greedy
from s2s.tokenizer import BOS, EOS, PAD, Tokenizers

VOCAB = 24
# Every recurrent decoder, with each cell, score and option at least once.
RNN_VARIANTS: dict[str, dict[str, object]] = {
    "sutskever-lstm": {"decoder": "sutskever", "cell": "lstm"},
    "sutskever-lstm-reversed": {"decoder": "sutskever", "cell": "lstm", "bidirectional": False, "reverse_source": True},
    "sutskever-gru": {"decoder": "sutskever", "cell": "gru"},
    "cho-gru": {"decoder": "cho", "cell": "gru"},
    "cho-lstm-maxout": {"decoder": "cho", "cell": "lstm", "maxout": True},
    "bahdanau-gru": {"decoder": "bahdanau", "cell": "gru"},
    "bahdanau-lstm-maxout-reversed": {"decoder": "bahdanau", "cell": "lstm", "maxout": True, "reverse_source": True},
    "luong-lstm-general": {"decoder": "luong", "cell": "lstm", "attention": "general"},
    "luong-gru-dot": {"decoder": "luong", "cell": "gru", "attention": "dot"},
    "luong-lstm-concat": {"decoder": "luong", "cell": "lstm", "attention": "concat"},
    "luong-gru-general-no-feeding": {"decoder": "luong", "cell": "gru", "attention": "general", "input_feeding": False},
}
VARIANTS = [*RNN_VARIANTS, "transformer-sinusoidal", "transformer-learned", "transformer-copy"]
ATTENTIVE = [v for v in VARIANTS if not v.startswith(("sutskever", "cho"))]


def make(variant: str, seed: int = 0, layers: int = 1) -> Seq2Seq:
    """A small model: a name from RNN_VARIANTS, `transformer-POSITIONS` or `transformer-copy` (copy attention)."""
    torch.manual_seed(seed)
    if variant.startswith("transformer"):
        option = variant.split("-")[1]
        tcfg = TransformerConfig(d_model=16, heads=2, encoder_layers=layers, decoder_layers=layers, ff=32, dropout=0.0,
                                 positions="sinusoidal" if option == "copy" else option, max_positions=64)  # fmt: skip
        cfg = ModelConfig(arch="transformer", transformer=tcfg, copy_attention=option == "copy")
    else:
        cfg = ModelConfig(rnn=RNNConfig.model_validate({"emb_dim": 16, "hidden": 24, "layers": layers, "dropout": 0.0,
                                                        **RNN_VARIANTS[variant]}))  # fmt: skip
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
    if variant not in ATTENTIVE:
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


@pytest.mark.parametrize("variant", ["bahdanau-gru", "luong-lstm-general", "transformer-learned"])
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
    # What it fed is its own argmax: teacher-forcing those predictions gives the same logits wherever a reference was.
    fed = torch.cat([tgt_in[:, :1], mixed.argmax(-1)[:, :-1]], dim=1)
    real = tgt_in != PAD
    torch.testing.assert_close(model(src, src_len, fed, teacher_forcing=1.0).logits[real], mixed[real])


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


def test_source_reversal_reverses_real_tokens_and_keeps_padding_at_the_end() -> None:
    src, src_len, _ = batch(SOURCES, TARGETS)
    assert reverse_padded(src, src_len).tolist() == [[9, 8, 7, 6, 5], [11, 10, 0, 0, 0], [14, 13, 12, 0, 0]]
    features = torch.arange(30.0).view(3, 5, 2)  # (B, S, F): whole feature vectors move together
    assert reverse_padded(features, src_len)[1].tolist() == [[12.0, 13.0], [10.0, 11.0], [14.0, 15.0], [16.0, 17.0], [18.0, 19.0]]
    assert torch.equal(reverse_padded(reverse_padded(src, src_len), src_len), src)


def test_a_reversed_source_reads_backwards_but_attends_in_source_order() -> None:
    model = make("bahdanau-lstm-maxout-reversed")
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    plain = build_model(ModelConfig(rnn=RNNConfig.model_validate({**model_cfg(model), "reverse_source": False})), VOCAB, VOCAB)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    # The reversed model on a source equals the plain model on the reversed source, with the attention flipped back.
    mine = model(src, src_len, tgt_in)
    theirs = plain(reverse_padded(src, src_len), src_len, tgt_in)
    torch.testing.assert_close(mine.logits, theirs.logits)
    assert mine.attention is not None and theirs.attention is not None
    torch.testing.assert_close(mine.attention, reverse_padded(theirs.attention.transpose(1, 2), src_len).transpose(1, 2))


def model_cfg(model: Seq2Seq) -> dict[str, object]:
    return model.decoder.cfg.model_dump()


def test_input_feeding_widens_the_step_input_by_the_attentional_state() -> None:
    fed, unfed = make("luong-lstm-general"), make("luong-gru-general-no-feeding")
    assert fed.decoder.cell.cells[0].input_size == 16 + 24  # e_{t-1} and h~_{t-1}
    assert unfed.decoder.rnn.input_size == 16
    # The fed-back state is part of the decoder state: changing it changes the next step's prediction.
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    state = fed.encode(src, src_len)
    assert torch.count_nonzero(state.cache[2]) == 0  # h~_0 = 0
    after = fed.decode(tgt_in[:, :1], state).state
    assert torch.count_nonzero(after.cache[2]) > 0
    nudged = replace(after, cache=(*after.cache[:2], after.cache[2] + 0.5))
    assert not torch.allclose(fed.decode(tgt_in[:, 1:2], after).logits, fed.decode(tgt_in[:, 1:2], nudged).logits)


@pytest.mark.parametrize(("variant", "previous_state"), [("bahdanau-gru", True), ("luong-lstm-general", False)])
def test_bahdanau_attends_with_the_previous_state_luong_with_the_current(variant: str, previous_state: bool) -> None:
    model = make(variant)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    other = tgt_in.clone()
    other[:, 0] = 7  # a different first input token
    first = model(src, src_len, tgt_in).attention
    changed = model(src, src_len, other).attention
    assert first is not None and changed is not None
    # Bahdanau's first step attends from s_0 (the bridge), before reading any token; Luong's attends after the step.
    assert torch.allclose(first[:, 0], changed[:, 0]) == previous_state


def test_cho_feeds_one_context_vector_to_every_step() -> None:
    model = make("cho-gru")
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    state = model.encode(src, src_len)
    assert state.cache[0].shape == (3, 24)  # (B, H): c, the same at every step
    assert model.decoder.rnn.input_size == 16 + 24  # [e_{t-1}; c]
    late = model.decode(tgt_in[:, :3], state).state  # three steps in
    zeroed = replace(late, cache=(torch.zeros_like(late.cache[0]),))
    assert not torch.allclose(model.decode(tgt_in[:, 3:4], late).logits, model.decode(tgt_in[:, 3:4], zeroed).logits)


def test_the_bridge_squashes_hidden_states_but_not_lstm_cells() -> None:
    cfg = RNNConfig(cell="lstm", hidden=8, bidirectional=True)
    bridge = Bridge(16, cfg)
    h, c = bridge((torch.full((1, 2, 16), 30.0), torch.full((1, 2, 16), 30.0)))
    assert h.abs().max() <= 1.0  # tanh on h
    assert c.abs().max() > 1.0  # a cell state stays unbounded: squashing it kept the context-only LSTM from learning
    # Equal sizes (one direction): the final state is copied, as in Sutskever et al.
    same = Bridge(8, RNNConfig(cell="gru", hidden=8, bidirectional=False))
    final = (torch.randn(2, 3, 8),)
    assert not list(same.parameters()) and torch.equal(same(final)[0], final[0])


def test_every_configured_decoder_has_a_class() -> None:
    assert set(DECODERS) == set(get_args(RNNConfig.model_fields["decoder"].annotation))


@pytest.mark.slow
def test_the_context_only_lstm_learns_within_a_few_hundred_steps(tmp_path: Path) -> None:
    """The test that would have caught the squashed cell state: default sizes, the default corpus, 368 updates.

    Measured: the fixed model reaches validation BLEU 24.3 here; with tanh on the bridged cell state and
    forget-gate biases at 0 (the code before the fix) the same run reaches 5.1.
    """
    torch.manual_seed(0)
    pairs = generate_pairs(4200, seed=5)
    train_pairs, valid_pairs = pairs[:4000], pairs[4000:]
    tokenizer.train(TokenizerConfig(vocab_size=500), [s for s, _ in train_pairs], [t for _, t in train_pairs], tmp_path)
    tok = Tokenizers.load(tmp_path)
    data = ParallelData.from_lists(tok.encode_src([s for s, _ in train_pairs]), tok.encode_tgt([t for _, t in train_pairs]))
    vocab = tok.src.get_piece_size()
    model = build_model(ModelConfig(rnn=RNNConfig(decoder="sutskever", cell="lstm")), vocab, vocab)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss(ignore_index=0, label_smoothing=0.1)
    batches = [b for epoch in range(4) for b in data.batches(800, shuffle=True, seed=epoch)]
    model.train()
    for b in batches:
        logits = model(b.src, b.src_len, b.tgt_in).logits
        loss = loss_fn(logits.reshape(-1, vocab), b.tgt_out.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    src_ids = tok.encode_src([s for s, _ in valid_pairs])
    hyps = greedy(model, pad(src_ids), torch.tensor([len(s) for s in src_ids]))
    bleu = score(tok.decode_tgt([h.tokens for h in hyps]), [t for _, t in valid_pairs], metrics=("bleu",))["bleu"]
    assert bleu > 15.0, f"validation BLEU {bleu} after {len(batches)} updates"


def test_copy_attention_outputs_a_normalised_mixture_of_vocabulary_and_source() -> None:
    model = make("transformer-copy")
    assert isinstance(model, CopySeq2Seq)
    src, src_len, tgt_in = batch(SOURCES, TARGETS)
    log_p = model(src, src_len, tgt_in).logits  # (B, T, V) log-probabilities already
    torch.testing.assert_close(log_p.exp().sum(-1), torch.ones(3, 5))
    torch.testing.assert_close(log_p.log_softmax(-1), log_p)  # what the loss and the searches take changes nothing
    # With the switch forced to copying, all the mass is on the sentence's own source tokens, in attention's shares.
    torch.nn.init.constant_(model.switch.bias, -50.0)
    with torch.no_grad():
        out = model(src, src_len, tgt_in)
    assert out.attention is not None
    for i, source in enumerate(SOURCES):
        probs = out.logits[i].exp()  # (T, V)
        others = [v for v in range(VOCAB) if v not in source]
        assert float(probs[:, others].max()) < 1e-6
        torch.testing.assert_close(probs[:, source], out.attention[i, :, : len(source)], rtol=1e-4, atol=1e-5)
    assert all(set(h.tokens) <= set(s) for h, s in zip(greedy(model, src, src_len, max_len_a=0, max_len_b=4), SOURCES,
                                                         strict=True))  # fmt: skip


def test_copy_needs_a_transformer_a_joint_vocabulary_and_no_ctranslate2_export() -> None:
    with pytest.raises(ValueError, match="copy_attention: true needs arch: transformer"):
        ModelConfig(arch="rnn", copy_attention=True)
    with pytest.raises(ValueError, match="needs a joint vocabulary"):
        separate = TransformerConfig(share_embeddings=False, tie_output=False)
        build_model(ModelConfig(arch="transformer", copy_attention=True, transformer=separate), 30, 40)
    with pytest.raises(ConfigError, match="promote.export: a model with copy_attention: true has no CTranslate2 equivalent"):
        parse_params({"model": {"arch": "transformer", "copy_attention": True}, "promote": {"export": "int8"}})


def test_attention_under_cpu_autocast_runs_in_float32_and_returns_bf16() -> None:
    """PyTorch's CPU attention kernels are ~4x slower in bf16 than in float32 (fwd+bwd), so under autocast
    `attend` computes in float32 on the bf16 inputs; without autocast it is scaled_dot_product_attention itself."""
    from s2s.models.transformer import attend

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen).bfloat16() for _ in range(3))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]  # (B, 1, 1, S)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attend(q, k, v, mask, 0.0, causal=False)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected.bfloat16())  # autocast alone (bf16 attention) differs here: checked on AMX
    plain = attend(q.float(), k.float(), v.float(), None, 0.0, causal=True)
    assert torch.equal(plain, torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True))
