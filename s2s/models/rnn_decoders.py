"""Recurrent decoders as their papers define them, chosen by `model.rnn.decoder`.

Notation: y_{t-1} the previous target token (its embedding e_{t-1}), s_t the
decoder's (top-layer) hidden state after step t, h_j the encoder's outputs,
c_t a context vector.

* `sutskever` (Sutskever et al. 2014, "Sequence to Sequence Learning with
  Neural Networks"): s_t = RNN(e_{t-1}, s_{t-1}); p(y_t) = softmax(W s_t). The
  encoder's final state initialises the decoder and is the only link to the
  source.
* `cho` (Cho et al. 2014, "Learning Phrase Representations using RNN
  Encoder-Decoder"): one context c = tanh(V h_N) for the whole sentence enters
  every step and the output: s_t = RNN([e_{t-1}; c], s_{t-1});
  p(y_t) = softmax(G r_t), r_t = deep output of [s_t; e_{t-1}; c].
* `bahdanau` (Bahdanau et al. 2015, "Neural Machine Translation by Jointly
  Learning to Align and Translate"): the previous state attends,
  a_tj = softmax_j(v . tanh(W s_{t-1} + U h_j)), c_t = sum_j a_tj h_j; the
  context joins the step's input, s_t = RNN([e_{t-1}; c_t], s_{t-1});
  p(y_t) = softmax(G r_t), r_t = deep output of [s_t; e_{t-1}; c_t] (their
  eq. 4; maxout with `maxout: true`, as in their appendix).
* `luong` (Luong et al. 2015, "Effective Approaches to Attention-based Neural
  Machine Translation", global attention): the step comes first,
  s_t = RNN([e_{t-1}; h~_{t-1}], s_{t-1}) with input feeding (RNN(e_{t-1}, ...)
  without); then a_tj = softmax_j(score(s_t, h_j)) with dot / general / concat
  scores, c_t = sum_j a_tj h_j, the attentional state h~_t = tanh(W_c [c_t; s_t])
  and p(y_t) = softmax(W_s h~_t).

Decoders whose step does not depend on attention (`sutskever`, `cho`, `luong`
without input feeding) run the whole teacher-forced target through cuDNN /
MKL's fused RNN in one call; the others step a stack of cells token by token.
Either way the state between calls is a `DecoderState`: hidden (L, B, H) as
`nn.LSTM` keeps it, and in `cache` (batch first) whatever the decoder carries
from step to step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from s2s.config import RNNConfig
from s2s.models.attention import AdditiveAttention, Attention, build_attention
from s2s.models.base import DecoderOutput, DecoderState
from s2s.models.dropout import Dropout
from s2s.tokenizer import PAD

RNN_CELLS: dict[str, type[nn.LSTM] | type[nn.GRU]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def recurrent(cfg: RNNConfig, input_size: int, bidirectional: bool) -> nn.RNNBase:
    """The configured LSTM/GRU stack; dropout between layers only when there are several."""
    dropout = cfg.dropout if cfg.layers > 1 else 0.0
    rnn = RNN_CELLS[cfg.cell](input_size, cfg.hidden, cfg.layers, batch_first=True, bidirectional=bidirectional, dropout=dropout)
    init_forget_gate(rnn)
    return rnn


def init_forget_gate(module: nn.Module, value: float = 1.0) -> None:
    """LSTM forget-gate biases start at 1 (Gers et al. 2000; Jozefowicz et al. 2015): remember by default.

    PyTorch keeps gates in the order input, forget, cell, output in both `bias_ih` and `bias_hh`;
    one of the two is enough. GRUs have no forget gate and are left alone.
    """
    for name, param in module.named_parameters():
        if name.startswith("bias_ih") and isinstance(module, nn.LSTM | nn.LSTMCell):
            hidden = param.numel() // 4
            with torch.no_grad():
                param[hidden : 2 * hidden].fill_(value)


class StackedCell(nn.Module):
    """`layers` LSTM/GRU cells stepped one token at a time, states in `nn.LSTM`'s (L, B, H) layout."""

    def __init__(self, cfg: RNNConfig, input_size: int) -> None:
        super().__init__()
        cell = nn.LSTMCell if cfg.cell == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList(cell(input_size if i == 0 else cfg.hidden, cfg.hidden) for i in range(cfg.layers))
        for c in self.cells:
            init_forget_gate(c)
        self.dropout = Dropout(cfg.dropout if cfg.layers > 1 else 0.0)
        self.lstm = cfg.cell == "lstm"

    def forward(self, x: torch.Tensor, hidden: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """x (B, I), hidden (L, B, H) each -> top layer's output (B, H), new hidden."""
        hs, cs = [], []
        for i, cell in enumerate(self.cells):
            if i:
                x = self.dropout(x)
            if self.lstm:
                h, c = cell(x, (hidden[0][i], hidden[1][i]))
                cs.append(c)
            else:
                h = cell(x, hidden[0][i])
            hs.append(h)
            x = h
        return x, (torch.stack(hs), torch.stack(cs)) if self.lstm else (torch.stack(hs),)


class DeepOutput(nn.Module):
    """Cho's and Bahdanau's output layer: r = maxout or tanh of a linear map of [s; e; c], then the vocabulary."""

    def __init__(self, input_size: int, size: int, vocab: int, maxout: bool, dropout: float) -> None:
        super().__init__()
        self.pool = 2 if maxout else 1
        self.proj = nn.Linear(input_size, size * self.pool)
        self.dropout = Dropout(dropout)
        self.out = nn.Linear(size, vocab)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> logits (B, T, V)."""
        r = self.proj(features)  # (B, T, size * pool)
        # maxout: the max over each pair of units
        r = r.unflatten(-1, (-1, self.pool)).amax(-1) if self.pool > 1 else torch.tanh(r)  # (B, T, size)
        logits: torch.Tensor = self.out(self.dropout(r))
        return logits


class RNNDecoder(nn.Module):
    """Base class: the target embedding and what every decoder shares; subclasses define `start` and `forward`."""

    def __init__(self, vocab: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab, cfg.emb_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)

    # How many of `start`'s entries depend on the source alone and never change (DecoderState.static).
    static: int = 0

    def start(self, memory: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the decoder carries besides the RNN state, from the encoder's outputs (B, S, K) and summary (B, K)."""
        return ()

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        raise NotImplementedError

    @staticmethod
    def _rnn_hidden(state: DecoderState) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return (state.hidden[0], state.hidden[1]) if len(state.hidden) > 1 else state.hidden[0]

    @staticmethod
    def _state(state: DecoderState, hidden: object, cache: tuple[torch.Tensor, ...], steps: int) -> DecoderState:
        hidden = hidden if isinstance(hidden, tuple) else (hidden,)
        return DecoderState(state.memory, state.mask, hidden, cache, state.step + steps, state.static)


class SutskeverDecoder(RNNDecoder):
    """Context vector only: the encoder's final state initialises the decoder, nothing else reaches it."""

    def __init__(self, vocab: int, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__(vocab, cfg)
        self.rnn = recurrent(cfg, cfg.emb_dim, bidirectional=False)
        self.out = nn.Linear(cfg.hidden, vocab)

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        out, hidden = self.rnn(emb, self._rnn_hidden(state))  # (B, T, H)
        return DecoderOutput(self.out(self.dropout(out)), self._state(state, hidden, (), tgt_in.size(1)), None)


class ChoDecoder(RNNDecoder):
    """One context vector, c = tanh(V h_N), fed to every step and to the output layer."""

    static = 1  # c

    def __init__(self, vocab: int, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__(vocab, cfg)
        self.context = nn.Linear(encoder_size, cfg.hidden)
        self.rnn = recurrent(cfg, cfg.emb_dim + cfg.hidden, bidirectional=False)
        self.readout = DeepOutput(2 * cfg.hidden + cfg.emb_dim, cfg.hidden, vocab, cfg.maxout, cfg.dropout)

    def start(self, memory: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.tanh(self.context(summary)),)  # (B, H)

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        context = state.cache[0][:, None, :].expand(-1, tgt_in.size(1), -1)  # (B, T, H)
        out, hidden = self.rnn(torch.cat([emb, context], dim=-1), self._rnn_hidden(state))  # (B, T, H)
        logits = self.readout(torch.cat([self.dropout(out), emb, context], dim=-1))
        return DecoderOutput(logits, self._state(state, hidden, state.cache, tgt_in.size(1)), None)


class BahdanauDecoder(RNNDecoder):
    """The previous state attends (additive score); the context joins the step's input and the output layer."""

    static = 1  # U h_j

    def __init__(self, vocab: int, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__(vocab, cfg)
        self.attention = AdditiveAttention(cfg.hidden, encoder_size)
        self.cell = StackedCell(cfg, cfg.emb_dim + encoder_size)
        self.readout = DeepOutput(cfg.hidden + cfg.emb_dim + encoder_size, cfg.hidden, vocab, cfg.maxout, cfg.dropout)

    def start(self, memory: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (self.attention.prepare(memory),)  # (B, S, A): U h_j once per sentence

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        keys, hidden = state.cache[0], state.hidden
        outs, contexts, weights = [], [], []
        for t in range(tgt_in.size(1)):
            query = hidden[0][-1][:, None, :]  # (B, 1, H): s_{t-1}, the top layer's previous state
            context, w = self.attention(query, keys, state.memory, state.mask)  # (B, 1, K), (B, 1, S)
            out, hidden = self.cell(torch.cat([emb[:, t], context[:, 0]], dim=-1), hidden)  # (B, H)
            outs.append(out)
            contexts.append(context[:, 0])
            weights.append(w)
        out, context = torch.stack(outs, 1), torch.stack(contexts, 1)  # (B, T, H), (B, T, K)
        logits = self.readout(torch.cat([self.dropout(out), emb, context], dim=-1))  # eq. 4: g(y_{t-1}, s_t, c_t)
        return DecoderOutput(logits, self._state(state, hidden, state.cache, tgt_in.size(1)), torch.cat(weights, 1))


class LuongDecoder(RNNDecoder):
    """The step comes first; its state attends; h~_t = tanh(W_c [c_t; s_t]) predicts and, with input feeding, is fed back."""

    static = 2  # the values and their prepared keys; h~ is fed back

    def __init__(self, vocab: int, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__(vocab, cfg)
        # Dot products need keys of the decoder's size: a bidirectional encoder's outputs are projected once.
        needs_proj = cfg.attention == "dot" and encoder_size != cfg.hidden
        self.key_proj = nn.Linear(encoder_size, cfg.hidden, bias=False) if needs_proj else None
        key_size = cfg.hidden if needs_proj else encoder_size
        self.attention: Attention = build_attention(cfg.attention, cfg.hidden, key_size)
        self.combine = nn.Linear(key_size + cfg.hidden, cfg.hidden, bias=False)  # W_c
        self.input_feeding = cfg.input_feeding
        if cfg.input_feeding:
            self.cell = StackedCell(cfg, cfg.emb_dim + cfg.hidden)
        else:
            self.rnn = recurrent(cfg, cfg.emb_dim, bidirectional=False)
        self.out = nn.Linear(cfg.hidden, vocab)  # W_s

    def start(self, memory: torch.Tensor, mask: torch.Tensor, summary: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = self.key_proj(memory) if self.key_proj is not None else memory  # (B, S, K)
        prepared = (values, self.attention.prepare(values))
        if not self.input_feeding:
            return prepared
        return (*prepared, memory.new_zeros(memory.size(0), self.cfg.hidden))  # h~_0 = 0

    def _attend(
        self, out: torch.Tensor, values: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """s (B, T, H) -> attentional states h~ (B, T, H) after dropout, weights (B, T, S)."""
        context, weights = self.attention(out, keys, values, mask)  # (B, T, K), (B, T, S)
        return self.dropout(torch.tanh(self.combine(torch.cat([context, out], dim=-1)))), weights

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        values, keys = state.cache[0], state.cache[1]
        if not self.input_feeding:
            out, hidden = self.rnn(emb, self._rnn_hidden(state))  # (B, T, H): every step at once
            attentional, weights = self._attend(out, values, keys, state.mask)
            return DecoderOutput(self.out(attentional), self._state(state, hidden, state.cache, tgt_in.size(1)), weights)
        hidden, feed = state.hidden, state.cache[2]
        steps: list[torch.Tensor] = []
        weights_at: list[torch.Tensor] = []
        for t in range(tgt_in.size(1)):
            out, hidden = self.cell(torch.cat([emb[:, t], feed], dim=-1), hidden)  # (B, H)
            attentional, w = self._attend(out[:, None, :], values, keys, state.mask)  # (B, 1, H), (B, 1, S)
            feed = attentional[:, 0]
            steps.append(attentional)
            weights_at.append(w)
        logits = self.out(torch.cat(steps, 1))  # (B, T, V)
        return DecoderOutput(logits, self._state(state, hidden, (values, keys, feed), tgt_in.size(1)), torch.cat(weights_at, 1))


DECODERS: dict[str, Callable[[int, int, RNNConfig], RNNDecoder]] = {  # (target vocab, encoder size, config)
    "sutskever": SutskeverDecoder,
    "cho": ChoDecoder,
    "bahdanau": BahdanauDecoder,
    "luong": LuongDecoder,
}
