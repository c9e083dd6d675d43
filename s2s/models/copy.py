"""Copy attention (pointer-generator, See et al. 2017) around any model that returns features and attention.

At each target position the model either generates from the vocabulary or
copies a source token: with p_gen = sigmoid(w . [h; c]) from the decoder
output h and the attention context c (the memory weighted by the attention),

    P(w) = p_gen * softmax(logits)(w) + (1 - p_gen) * sum of attention over source positions holding w.

The vocabulary is joint (a source subword id is the same target id), so no
extended vocabulary is needed: a word the vocabulary lacks is spelt in
subwords either way. `decode` returns log P as its "logits": they are
already normalised, so every consumer that takes log_softmax (the loss,
beam search, sampling) gets log P unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from s2s.models.base import DecoderOutput, DecoderState, Seq2Seq

FLOOR = 1e-9  # P never reaches 0: a token neither generated nor in the source keeps a finite log-probability


class CopySeq2Seq(Seq2Seq):
    def __init__(self, inner: Seq2Seq, d_model: int) -> None:
        super().__init__()
        if inner.src_vocab != inner.tgt_vocab:
            raise ValueError(
                "model.copy_attention needs a joint vocabulary (tokenizer.joint: true): it copies source ids as target ids"
            )
        self.inner = inner
        self.src_vocab, self.tgt_vocab = inner.src_vocab, inner.tgt_vocab
        self.max_source_tokens, self.max_output_tokens = inner.max_source_tokens, inner.max_output_tokens
        self.switch = nn.Linear(2 * d_model, 1)  # [h; c] -> the logit of p_gen
        nn.init.zeros_(self.switch.weight)
        nn.init.constant_(self.switch.bias, 1.0)  # start mostly generating (p_gen 0.73): copying is learned, not imposed

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> DecoderState:
        state = self.inner.encode(src, src_len)
        state.source = src
        return state

    def decode(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        src = state.source
        out = self.inner.decode(tgt_in, state)
        if src is None or out.features is None or out.attention is None:
            raise ValueError("copy attention needs the source ids, the decoder's features and its attention")
        out.state.source = src
        attention = out.attention  # (B, T, S)
        context = attention @ state.memory  # (B, T, D)
        p_gen = torch.sigmoid(self.switch(torch.cat([out.features, context], dim=-1)).float())  # (B, T, 1)
        generated = out.logits.float().softmax(-1)  # (B, T, V)
        index = src[:, None, :].expand(-1, attention.size(1), -1)  # (B, T, S)
        copied = torch.zeros_like(generated).scatter_add_(2, index, attention.float())  # (B, T, V); PAD gets masked-out 0s
        mixed = p_gen * generated + (1.0 - p_gen) * copied
        return DecoderOutput(mixed.clamp_min(FLOOR).log(), out.state, attention, out.features)
