"""The interface every architecture implements, so training and search are shared.

A model encodes a batch once into a `DecoderState`, then `decode` consumes
target tokens: all of them at once during training (teacher forcing), or one
at a time during search, carrying the state (RNN hidden state, attention
memory) instead of recomputing the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DecoderState:
    """Everything the decoder needs to continue from where it stopped."""

    memory: torch.Tensor  # (B, S, H) encoder outputs
    mask: torch.Tensor  # (B, S) true on real source tokens
    hidden: tuple[torch.Tensor, ...] = ()  # RNN: (L, B, H) each (h, and c for LSTM); batch on dim 1
    cache: tuple[torch.Tensor, ...] = ()  # what the decoder carries between steps (attention keys, input feed...); batch on dim 0
    step: int = 0  # target tokens consumed so far (the next token's position)
    static: int = 0  # leading `cache` entries that depend on the source alone (attention keys and values of the memory)
    source: torch.Tensor | None = None  # (B, S) the source ids, kept where the model copies from them (model.copy_attention)

    def select(self, index: torch.Tensor) -> DecoderState:
        """Reorder / repeat the batch (beam search)."""
        return DecoderState(
            memory=self.memory.index_select(0, index),
            mask=self.mask.index_select(0, index),
            hidden=tuple(h.index_select(1, index) for h in self.hidden),
            cache=tuple(c.index_select(0, index) for c in self.cache),
            step=self.step,
            static=self.static,
            source=None if self.source is None else self.source.index_select(0, index),
        )

    def reorder(self, index: torch.Tensor) -> DecoderState:
        """`select` for an `index` that only moves rows among one sentence's beams (each step of beam search).

        The memory, its mask and the static cache are the same in every beam of a sentence, so they stay as they
        are: gathering them again at every step copied the whole source side of the batch per step for nothing.
        """
        return DecoderState(
            memory=self.memory,
            mask=self.mask,
            hidden=tuple(h.index_select(1, index) for h in self.hidden),
            cache=(*self.cache[: self.static], *(c.index_select(0, index) for c in self.cache[self.static :])),
            step=self.step,
            static=self.static,
            source=self.source,
        )

    def __repr__(self) -> str:  # tensors are too long to print
        return f"DecoderState(step={self.step}, hidden={len(self.hidden)}, cache={len(self.cache)})"


@dataclass(frozen=True)
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V)
    state: DecoderState
    attention: torch.Tensor | None  # (B, T, S) source attention, None without attention
    features: torch.Tensor | None = None  # (B, T, D) what the output layer reads (Transformer; copy attention needs it)


class Seq2Seq(nn.Module):
    """Base class of all architectures."""

    src_vocab: int
    tgt_vocab: int
    # Longest source / output (EOS not counted) the model can take; None: no limit of its own (recurrent models).
    max_source_tokens: int | None = None
    max_output_tokens: int | None = None

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> DecoderState:
        """src (B, S), src_len (B,) -> initial decoder state."""
        raise NotImplementedError

    def decode(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        """tgt_in (B, T) -> logits for the next token at every position, and the state after it."""
        raise NotImplementedError

    def forward(
        self,
        src: torch.Tensor,
        src_len: torch.Tensor,
        tgt_in: torch.Tensor,
        teacher_forcing: float = 1.0,
    ) -> DecoderOutput:
        """Training forward pass; logits (B, T, V) predicting tgt_in shifted by one.

        With `teacher_forcing` < 1 each step feeds, with that probability, the
        reference token, else the model's own previous prediction.
        """
        state = self.encode(src, src_len)
        if teacher_forcing >= 1.0:
            return self.decode(tgt_in, state)
        logits, attentions = [], []
        token = tgt_in[:, :1]  # (B, 1) BOS
        for t in range(tgt_in.size(1)):
            out = self.decode(token, state)
            state = out.state
            logits.append(out.logits)
            if out.attention is not None:
                attentions.append(out.attention)
            if t + 1 < tgt_in.size(1):
                use_reference = torch.rand(token.size(0), 1, device=token.device) < teacher_forcing
                token = torch.where(use_reference, tgt_in[:, t + 1 : t + 2], out.logits.argmax(-1))
        attention = torch.cat(attentions, dim=1) if attentions else None
        return DecoderOutput(torch.cat(logits, dim=1), state, attention)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
