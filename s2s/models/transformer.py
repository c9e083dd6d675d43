"""Transformer encoder-decoder (Vaswani et al. 2017), pre-norm (Xiong et al. 2020).

Attention runs through `scaled_dot_product_attention`, so fused kernels are
used where the hardware has them. Incremental decoding caches every decoder
layer's self-attention keys and values, and the cross-attention keys and
values of the encoder output are computed once per sentence. The last decoder
layer's cross-attention weights (mean over heads) are returned for attention
maps; that one layer computes them explicitly, the others never materialise
weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from s2s.config import TransformerConfig
from s2s.models.base import DecoderOutput, DecoderState, Seq2Seq
from s2s.models.dropout import Dropout, dropout
from s2s.tokenizer import PAD


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) fixed sinusoidal position encodings."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return table


class Embedding(nn.Module):
    table: torch.Tensor  # the sinusoids, a buffer (positions: sinusoidal)
    """Token embedding scaled by sqrt(d) plus sinusoidal or learned positions."""

    def __init__(self, vocab: int, cfg: TransformerConfig) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, cfg.d_model, padding_idx=PAD)
        nn.init.normal_(self.tokens.weight, std=cfg.d_model**-0.5)
        self.scale = cfg.d_model**0.5
        if cfg.positions == "learned":
            self.learned = nn.Embedding(cfg.max_positions, cfg.d_model)
            nn.init.normal_(self.learned.weight, std=0.02)
        else:
            self.register_buffer("table", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)
        self.positions = cfg.positions
        self.max_positions = cfg.max_positions
        self.dropout = Dropout(cfg.dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        """ids (B, T) at positions start..start+T-1 -> (B, T, D)."""
        end = start + ids.size(1)
        if end > self.max_positions:
            raise ValueError(f"sequence of {end} positions exceeds model.transformer.max_positions={self.max_positions}")
        pos = self.learned.weight[start:end] if self.positions == "learned" else self.table[start:end]
        embedded: torch.Tensor = self.dropout(self.tokens(ids) * self.scale + pos)
        return embedded


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float, causal: bool
) -> torch.Tensor:
    """`scaled_dot_product_attention`, in float32 under CPU autocast: PyTorch's CPU kernels for it are about 4x
    slower in bf16 than in float32, forward and backward (BENCHMARKS.md "Precision"), and autocast would run it in
    bf16. Its matmuls are small next to the projections around it, which stay bf16."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p,
                                                 is_causal=causal)  # fmt: skip
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=causal)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.heads, self.d_head = cfg.heads, cfg.d_model // cfg.heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        self.dropout = cfg.attention_dropout

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, heads, T, Dh)."""
        return x.view(x.size(0), x.size(1), self.heads, self.d_head).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(x).chunk(2, dim=-1)
        return self.split(k), self.split(v)  # (B, heads, S, Dh) each

    def forward(
        self,
        x: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool = False,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, T, D) attends to k, v (B, heads, S, Dh); mask (B, 1|T, S) true where allowed."""
        q = self.split(self.q(x))  # (B, heads, T, Dh)
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)  # (B, heads, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask[:, None], float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            out = dropout(probs, self.dropout, self.training) @ v
            weights = probs.mean(dim=1)  # (B, T, S)
        else:
            attn_mask = None if mask is None else mask[:, None]  # (B, 1, 1|T, S)
            out = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0, causal)
        out = out.transpose(1, 2).reshape(x.size(0), x.size(1), -1)  # (B, T, D)
        return self.out(out), weights


class FeedForward(nn.Sequential):
    def __init__(self, cfg: TransformerConfig) -> None:
        # Dropout on the ff-wide activations (fairseq's activation_dropout) is off by default: its tensors
        # are ff/d_model times a residual branch's, and on CPU drawing their masks is slow.
        super().__init__(
            nn.Linear(cfg.d_model, cfg.ff), nn.ReLU(), Dropout(cfg.activation_dropout), nn.Linear(cfg.ff, cfg.d_model)
        )


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn, self.ff = MultiHeadAttention(cfg), FeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        k, v = self.attn.keys_values(h)
        x = x + self.dropout(self.attn(h, k, v, mask[:, None, :])[0])  # (B, S, D)
        out: torch.Tensor = x + self.dropout(self.ff(self.norm2(x)))
        return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn, self.cross_attn, self.ff = MultiHeadAttention(cfg), MultiHeadAttention(cfg), FeedForward(cfg)
        self.dropout = Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        past: tuple[torch.Tensor, torch.Tensor] | None,
        cross: tuple[torch.Tensor, torch.Tensor],
        src_mask: torch.Tensor,
        need_weights: bool,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor | None]:
        """x (B, T, D); past self-attention keys/values (B, heads, P, Dh) or None."""
        h = self.norms[0](x)
        k, v = self.self_attn.keys_values(h)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, heads, P+T, Dh)
        t, total = x.size(1), k.size(2)
        if t == 1:
            self_out, _ = self.self_attn(h, k, v, None)  # one new token may see everything before it
        elif total == t:
            self_out, _ = self.self_attn(h, k, v, None, causal=True)
        else:  # several new tokens after a cached prefix: causal mask shifted by the prefix length
            allowed = torch.ones(t, total, dtype=torch.bool, device=x.device).tril(total - t)
            self_out, _ = self.self_attn(h, k, v, allowed[None].expand(x.size(0), -1, -1))
        x = x + self.dropout(self_out)
        cross_out, weights = self.cross_attn(self.norms[1](x), *cross, src_mask[:, None, :], need_weights=need_weights)
        x = x + self.dropout(cross_out)
        return x + self.dropout(self.ff(self.norms[2](x))), (k, v), weights


class TransformerSeq2Seq(Seq2Seq):
    def __init__(self, src_vocab: int, tgt_vocab: int, cfg: TransformerConfig) -> None:
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"model.transformer.d_model={cfg.d_model} must be divisible by heads={cfg.heads}")
        if cfg.share_embeddings and src_vocab != tgt_vocab:
            raise ValueError("model.transformer.share_embeddings needs a joint vocabulary (tokenizer.joint: true)")
        self.src_vocab, self.tgt_vocab, self.cfg = src_vocab, tgt_vocab, cfg
        # Positions 0..max_positions-1: the decoder also reads BOS, so one output token fewer.
        self.max_source_tokens, self.max_output_tokens = cfg.max_positions, cfg.max_positions - 1
        self.src_embed = Embedding(src_vocab, cfg)
        self.tgt_embed = self.src_embed if cfg.share_embeddings else Embedding(tgt_vocab, cfg)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, tgt_vocab, bias=False)
        if cfg.tie_output:
            self.out.weight = self.tgt_embed.tokens.weight

    def encoder_layers(self) -> list[EncoderLayer]:
        return [layer for layer in self.encoder if isinstance(layer, EncoderLayer)]  # all of them: ModuleList is untyped

    def decoder_layers(self) -> list[DecoderLayer]:
        return [layer for layer in self.decoder if isinstance(layer, DecoderLayer)]

    def encode(self, src: torch.Tensor, src_len: torch.Tensor) -> DecoderState:
        mask = torch.arange(src.size(1), device=src.device)[None, :] < src_len[:, None]  # (B, S)
        x = self.src_embed(src)  # (B, S, D)
        for layer in self.encoder:
            x = layer(x, mask)
        memory = self.enc_norm(x)
        # Cross-attention keys/values depend only on the source: compute them once.
        cross = tuple(t for layer in self.decoder_layers() for t in layer.cross_attn.keys_values(memory))
        return DecoderState(memory=memory, mask=mask, cache=cross, step=0, static=len(cross))

    def decode(self, tgt_in: torch.Tensor, state: DecoderState) -> DecoderOutput:
        n = len(self.decoder)
        cross, past = state.cache[: 2 * n], state.cache[2 * n :]
        x = self.tgt_embed(tgt_in, start=state.step)  # (B, T, D)
        new_past: list[torch.Tensor] = []
        weights = None
        for i, layer in enumerate(self.decoder):
            layer_past = (past[2 * i], past[2 * i + 1]) if past else None
            x, kv, w = layer(x, layer_past, (cross[2 * i], cross[2 * i + 1]), state.mask, need_weights=i == n - 1)
            new_past.extend(kv)
            weights = w if w is not None else weights
        features = self.dec_norm(x)  # (B, T, D)
        logits = self.out(features)  # (B, T, V)
        new_state = DecoderState(state.memory, state.mask, cache=(*cross, *new_past), step=state.step + tgt_in.size(1),
                                 static=state.static)  # fmt: skip
        return DecoderOutput(logits, new_state, weights, features)
