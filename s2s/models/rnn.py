"""Recurrent encoder-decoder (Sutskever et al. 2014; Cho et al. 2014), with or
without Luong / Bahdanau attention.

The encoder's final hidden (and cell) state is the context vector: a bridge
maps it to the decoder's initial state. With attention, the decoder output at
each step is combined with an attention-weighted sum of encoder outputs
(Luong et al. 2015, global attention). Attention is computed after the RNN
step rather than fed back into it, so with teacher forcing the whole target
runs through the RNN in one call, which is several times faster on CPU.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s.config import RNNConfig
from s2s.models.attention import build_attention
from s2s.models.base import DecoderOutput, DecoderState, Seq2Seq
from s2s.models.dropout import Dropout
from s2s.tokenizer import PAD

_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


def _recurrent(cfg: RNNConfig, bidirectional: bool) -> nn.RNNBase:
    """The configured LSTM/GRU stack over embeddings; dropout between layers only when there are several."""
    dropout = cfg.dropout if cfg.layers > 1 else 0.0
    return _CELLS[cfg.cell](cfg.emb_dim, cfg.hidden, cfg.layers, batch_first=True, bidirectional=bidirectional, dropout=dropout)


class RNNEncoder(nn.Module):
    def __init__(self, vocab: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab, cfg.emb_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        self.rnn = _recurrent(cfg, cfg.bidirectional)
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


class RNNDecoder(nn.Module):
    def __init__(self, vocab: int, encoder_size: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab, cfg.emb_dim, padding_idx=PAD)
        self.dropout = Dropout(cfg.dropout)
        self.rnn = _recurrent(cfg, bidirectional=False)
        self.attention = None
        out_in = cfg.hidden
        if cfg.attention != "none":
            # Dot attention needs keys of the decoder's size: project the encoder outputs once.
            self.key_proj = nn.Linear(encoder_size, cfg.hidden, bias=False) if cfg.attention == "dot" else None
            key_size = cfg.hidden if cfg.attention == "dot" else encoder_size
            self.attention = build_attention(cfg.attention, cfg.hidden, key_size)
            self.combine = nn.Linear(cfg.hidden + key_size, cfg.hidden)
        self.out = nn.Linear(out_in, vocab)

    def forward(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        emb = self.dropout(self.embed(tgt_in))  # (B, T, E)
        hidden = state.hidden if len(state.hidden) > 1 else state.hidden[0]
        out, new_hidden = self.rnn(emb, hidden)  # (B, T, H)
        new_state = DecoderState(
            memory=state.memory,
            mask=state.mask,
            hidden=new_hidden if isinstance(new_hidden, tuple) else (new_hidden,),
            step=state.step + tgt_in.size(1),
        )
        weights = None
        if self.attention is not None:
            context, weights = self.attention(out, state.memory, state.mask)  # (B, T, K), (B, T, S)
            out = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))  # (B, T, H)
        return DecoderOutput(self.out(self.dropout(out)), new_state, weights)


class RNNSeq2Seq(Seq2Seq):
    def __init__(self, src_vocab: int, tgt_vocab: int, cfg: RNNConfig) -> None:
        super().__init__()
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.encoder = RNNEncoder(src_vocab, cfg)
        self.decoder = RNNDecoder(tgt_vocab, self.encoder.output_size, cfg)
        # The bridge turns the context vector into the decoder's initial state.
        n_states = 2 if cfg.cell == "lstm" else 1
        self.bridge = nn.ModuleList(nn.Linear(self.encoder.output_size, cfg.hidden) for _ in range(n_states))

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> DecoderState:
        memory, final = self.encoder(src, src_len)  # (B, S, D*H), (L, B, D*H)
        if self.decoder.attention is not None and self.decoder.key_proj is not None:
            memory = self.decoder.key_proj(memory)  # (B, S, H)
        hidden = tuple(torch.tanh(bridge(state)).contiguous() for bridge, state in zip(self.bridge, final, strict=True))
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_len[:, None]  # (B, S)
        return DecoderState(memory=memory, mask=mask, hidden=hidden)

    def decode(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        return self.decoder(tgt_in, state)
