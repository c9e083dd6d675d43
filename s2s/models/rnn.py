"""Recurrent encoder-decoder: an LSTM/GRU encoder, a bridge, and one of the
decoders of `s2s.models.rnn_decoders` (Sutskever, Cho, Bahdanau, Luong).

The bridge turns the encoder's final state (the context vector) into the
decoder's initial state: copied as is when the sizes match (Sutskever et
al.'s multi-layer LSTM), else mapped by a linear layer per state, with tanh
on h (a hidden state lives in [-1, 1]) and none on an LSTM's cell state.
Squashing the cell state is what kept the context-only LSTM from learning:
an encoder's c is unbounded (std 2-7 on the default corpus early in
training), the bridge's pre-activation had a std of 20-50, tanh saturated,
the decoder started from a near-constant c and no gradient reached the
encoder through it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s.config import RNNConfig
from s2s.models.base import DecoderOutput, DecoderState, Seq2Seq
from s2s.models.dropout import Dropout
from s2s.models.rnn_decoders import DECODERS, recurrent
from s2s.tokenizer import PAD


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each row's first `lengths[b]` positions of x (B, S, ...); padding stays at the end."""
    positions = torch.arange(x.size(1), device=x.device)[None, :]  # (1, S)
    index = lengths[:, None].to(x.device) - 1 - positions  # (B, S)
    index = torch.where(index >= 0, index, positions)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class RNNEncoder(nn.Module):
    def __init__(self, vocab: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab, cfg.emb_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        self.rnn = recurrent(cfg, cfg.emb_dim, cfg.bidirectional)
        self.output_size = cfg.hidden * (2 if cfg.bidirectional else 1)

    def forward(self, src: torch.Tensor, src_len: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """src (B, S) -> outputs (B, S, D*H), final states (L, B, D*H) each (h, and c for LSTM)."""
        emb = self.dropout(self.embed(src))  # (B, S, E)
        # Packing makes every sentence's outputs independent of the batch's padding.
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, final = self.rnn(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))  # (B, S, D*H)
        states = final if isinstance(final, tuple) else (final,)
        return out, tuple(self._merge_directions(s) for s in states)

    def _merge_directions(self, state: torch.Tensor) -> torch.Tensor:
        """(L*D, B, H) -> (L, B, D*H): forward and backward final states side by side."""
        if not self.cfg.bidirectional:
            return state
        layers, batch = self.cfg.layers, state.size(1)
        return state.view(layers, 2, batch, -1).transpose(1, 2).reshape(layers, batch, -1)


class Bridge(nn.Module):
    """The encoder's final states (L, B, K) each -> the decoder's initial states (L, B, H)."""

    def __init__(self, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__()
        n_states = 2 if cfg.cell == "lstm" else 1
        self.copy = encoder_size == cfg.hidden
        self.maps = nn.ModuleList() if self.copy else nn.ModuleList(nn.Linear(encoder_size, cfg.hidden) for _ in range(n_states))

    def forward(self, final: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        if self.copy:
            return tuple(s.contiguous() for s in final)
        h = torch.tanh(self.maps[0](final[0]))
        return (h.contiguous(), *(m(s).contiguous() for m, s in zip(self.maps[1:], final[1:], strict=True)))


class RNNSeq2Seq(Seq2Seq):
    def __init__(self, src_vocab: int, tgt_vocab: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.reverse_source = cfg.reverse_source
        self.encoder = RNNEncoder(src_vocab, cfg)
        self.bridge = Bridge(self.encoder.output_size, cfg)
        self.decoder = DECODERS[cfg.decoder](tgt_vocab, self.encoder.output_size, cfg)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> DecoderState:
        if self.reverse_source:
            src = reverse_padded(src, src_len)
        memory, final = self.encoder(src, src_len)  # (B, S, D*H), (L, B, D*H) each
        if self.reverse_source:
            memory = reverse_padded(memory, src_len)  # back in source order: attention weights index real positions
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_len[:, None].to(src.device)  # (B, S)
        cache = self.decoder.start(memory, mask, summary=final[0][-1])  # summary: the top layer's final h (B, D*H)
        return DecoderState(memory=memory, mask=mask, hidden=self.bridge(final), cache=cache, static=self.decoder.static)

    def decode(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        out: DecoderOutput = self.decoder(tgt_in, state)
        return out
