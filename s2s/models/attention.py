"""Source-target attention: score every source position, softmax, weighted sum.

All variants score a whole block of decoder queries at once, (B, T, Hq)
against (B, S, Hk) keys, so a decoder that attends after its recurrence runs
attention for every target step in one call, and step-by-step decoding is the
T = 1 case of the same code. The part of a score that depends on the keys
alone is computed once per batch (`prepare`) and reused at every step.
"""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Base class: subclasses define `score` (and `prepare`); masking, softmax and the sum are shared."""

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        """(B, S, Hk) encoder outputs -> what `score` takes as keys; once per batch."""
        return keys

    def score(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        """(B, T, Hq), prepared keys (B, S, *) -> (B, T, S) unnormalised scores."""
        raise NotImplementedError

    def forward(
        self, query: torch.Tensor, prepared: torch.Tensor, values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, Hq), prepared keys, values (B, S, Hv), mask (B, S) true on real tokens.

        Returns the context (B, T, Hv) and the weights (B, T, S), which sum to 1
        over the unmasked source positions and are exactly 0 on padding.
        """
        scores = self.score(query, prepared)  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # (B, T, S)
        return weights @ values, weights  # (B, T, Hv), (B, T, S)


class DotAttention(Attention):
    """Luong dot: score = h_t . h_s (query and key sizes must match)."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        if query_size != key_size:
            raise ValueError(f"dot attention needs equal sizes, got query {query_size} and key {key_size}")

    def score(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        return query @ prepared.transpose(1, 2)


class GeneralAttention(Attention):
    """Luong general: score = h_t W_a h_s."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(key_size, query_size, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        prepared: torch.Tensor = self.proj(keys)  # (B, S, Hq)
        return prepared

    def score(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        return query @ prepared.transpose(1, 2)


class AdditiveAttention(Attention):
    """Bahdanau's score, v . tanh(W q + U k); Luong calls it concat, v . tanh(W_a [h_t; h_s])."""

    def __init__(self, query_size: int, key_size: int, size: int | None = None) -> None:
        super().__init__()
        size = size or query_size
        self.q_proj = nn.Linear(query_size, size, bias=False)
        self.k_proj = nn.Linear(key_size, size, bias=False)
        self.v = nn.Linear(size, 1, bias=False)

    def prepare(self, keys: torch.Tensor) -> torch.Tensor:
        prepared: torch.Tensor = self.k_proj(keys)  # (B, S, A): U h_j, the same at every decoder step
        return prepared

    def score(self, query: torch.Tensor, prepared: torch.Tensor) -> torch.Tensor:
        q = self.q_proj(query)[:, :, None, :]  # (B, T, 1, A)
        scores: torch.Tensor = self.v(torch.tanh(q + prepared[:, None, :, :]))  # (B, T, S, 1)
        return scores.squeeze(-1)  # (B, T, S)


# Luong et al. 2015's names for the scores of its global attention.
LUONG_SCORES: dict[str, type[Attention]] = {
    "dot": DotAttention,
    "general": GeneralAttention,
    "concat": AdditiveAttention,
}


def build_attention(kind: str, query_size: int, key_size: int) -> Attention:
    try:
        return LUONG_SCORES[kind](query_size, key_size)
    except KeyError:
        raise ValueError(f"unknown attention {kind!r}; choose one of {sorted(LUONG_SCORES)}") from None
