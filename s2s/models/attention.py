"""Source-target attention: score every source position, softmax, weighted sum.

All variants score a whole block of decoder queries at once, (B, T, H) against
(B, S, H) keys, so training runs attention for every target step in one call
and incremental decoding is the T = 1 case of the same code.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base class: subclasses define `score`; masking, softmax and the sum are shared."""

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(B, T, Hq), (B, S, Hk) -> (B, T, S) unnormalised scores."""
        raise NotImplementedError

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Hq), keys (B, S, Hk), mask (B, S) true on real tokens.

        Returns the context (B, T, Hk) and the weights (B, T, S), which sum to 1
        over the unmasked source positions and are exactly 0 on padding.
        """
        scores = self.score(query, keys)  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return weights @ keys, weights  # (B, T, Hk), (B, T, S)


class DotAttention(Attention):
    """Luong dot: score = q . k (query and key sizes must match)."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        if query_size != key_size:
            raise ValueError(f"dot attention needs equal sizes, got query {query_size} and key {key_size}")

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ keys.transpose(1, 2)


class GeneralAttention(Attention):
    """Luong general: score = q W k."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(key_size, query_size, bias=False)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        return query @ self.proj(keys).transpose(1, 2)


class AdditiveAttention(Attention):
    """Bahdanau additive: score = v . tanh(W q + U k)."""

    def __init__(self, query_size: int, key_size: int, size: int | None = None) -> None:
        super().__init__()
        size = size or query_size
        self.q_proj = nn.Linear(query_size, size, bias=False)
        self.k_proj = nn.Linear(key_size, size, bias=False)
        self.v = nn.Linear(size, 1, bias=False)

    def score(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(query)[:, :, None, :]  # (B, T, 1, A)
        k = self.k_proj(keys)[:, None, :, :]  # (B, 1, S, A)
        return self.v(torch.tanh(q + k)).squeeze(-1)  # (B, T, S)


ATTENTION: dict[str, type[Attention]] = {
    "dot": DotAttention,
    "general": GeneralAttention,
    "additive": AdditiveAttention,
}


def build_attention(kind: str, query_size: int, key_size: int) -> Attention:
    try:
        return ATTENTION[kind](query_size, key_size)
    except KeyError:
        raise ValueError(f"unknown attention {kind!r}; choose one of {sorted(ATTENTION)}") from None
