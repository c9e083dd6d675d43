"""Greedy and batched beam search, shared by every architecture.

Both decode incrementally: the model's `DecoderState` is carried from step to
step (and reordered for beams), so no step recomputes the prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2s.models import Seq2Seq
from s2s.tokenizer import BOS, EOS, PAD

NEVER = [PAD, BOS]  # tokens a hypothesis can never contain


@dataclass(frozen=True)
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # log-probability (beam: divided by the length penalty)
    attention: torch.Tensor | None  # (len(tokens) + 1, S) weights for each output step incl. EOS


def max_lengths(src_len: torch.Tensor, a: float, b: int, cap: int | None = None) -> torch.Tensor:
    """Per-sentence limit on output tokens (EOS not counted), relative to the source length, at most `cap`."""
    return (src_len.float() * a + b).long().clamp(min=1, max=cap)  # (B,)


def _trim(tokens: list[int]) -> list[int]:
    return tokens[: tokens.index(EOS)] if EOS in tokens else tokens


def banned_ngrams(generated: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, tokens) whose next token would repeat an n-gram of that row's output; generated (R, L), no BOS.

    The next token completes an n-gram whose first n-1 tokens are the row's last n-1; every earlier n-gram starting
    with those tokens bans its last token (fairseq's no_repeat_ngram_size). n = 1 bans every token already output.
    """
    _, length = generated.shape
    empty = torch.zeros(0, dtype=torch.long, device=generated.device)
    if n < 1 or length < n:
        return empty, empty
    windows = generated.unfold(1, n, 1)  # (R, L-n+1, n)
    if n == 1:
        match = torch.ones(windows.shape[:2], dtype=torch.bool, device=generated.device)
    else:
        prefix = generated[:, length - n + 1 :]  # (R, n-1)
        match = (windows[:, :, :-1] == prefix[:, None, :]).all(-1)  # (R, L-n+1)
    row, window = match.nonzero(as_tuple=True)
    return row, windows[row, window, -1]


def step_log_probs(
    logits: torch.Tensor,
    at_limit: torch.Tensor,
    step: int = 0,
    min_len: int = 0,
    generated: torch.Tensor | None = None,
    no_repeat_ngram: int = 0,
) -> torch.Tensor:
    """The last step's log-probabilities (R, V) with every rule of the search applied, in this order: never a special
    token but EOS; no EOS before `min_len` output tokens; no repeated n-gram of `generated` (R, step); and at the
    length limit (`at_limit` (R,)) only EOS, which wins over the other rules."""
    logp = logits[:, -1].float().log_softmax(-1)
    logp[:, NEVER] = float("-inf")
    if step < min_len:
        logp[:, EOS] = float("-inf")
    if no_repeat_ngram and generated is not None:
        rows, tokens = banned_ngrams(generated, no_repeat_ngram)
        logp[rows, tokens] = float("-inf")
    logp[at_limit] = float("-inf")
    logp[at_limit, EOS] = 0.0
    return logp


@torch.no_grad()
def greedy(
    model: Seq2Seq,
    src: torch.Tensor,
    src_len: torch.Tensor,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
) -> list[Hypothesis]:
    """Argmax decoding of a batch; src (B, S), src_len (B,)."""
    batch = src.size(0)
    limits = max_lengths(src_len, max_len_a, max_len_b, model.max_output_tokens).to(src.device)
    state = model.encode(src, src_len)
    token = torch.full((batch, 1), BOS, dtype=torch.long, device=src.device)
    steps: list[torch.Tensor] = []
    attn_steps = []
    score = torch.zeros(batch, device=src.device)
    alive = torch.ones(batch, dtype=torch.bool, device=src.device)
    for t in range(int(limits.max()) + 1):
        out = model.decode(token, state)
        state = out.state
        generated = torch.stack(steps, 1) if no_repeat_ngram and steps else None  # (B, t)
        logp = step_log_probs(out.logits, limits <= t, t, min_len, generated, no_repeat_ngram)  # (B, V)
        best, token = logp.max(-1)  # (B,), (B,)
        score += torch.where(alive, best, torch.zeros_like(best))
        steps.append(token)
        if out.attention is not None:
            attn_steps.append(out.attention[:, -1])
        alive &= token != EOS
        token = token[:, None]
        if not alive.any():
            break
    tokens = torch.stack(steps, 1).tolist()  # (B, T)
    attention = torch.stack(attn_steps, 1) if attn_steps else None  # (B, T, S)
    hyps = []
    for i, seq in enumerate(tokens):
        out_tokens = _trim(seq)
        n = min(len(out_tokens) + 1, len(seq))
        weights = attention[i, :n, : int(src_len[i])].cpu() if attention is not None else None
        hyps.append(Hypothesis(out_tokens, float(score[i]), weights))
    return hyps


def length_penalty(length: int, alpha: float) -> float:
    """GNMT length penalty (Wu et al. 2016); alpha 0 disables it."""
    return float(((5.0 + length) / 6.0) ** alpha)


def _done(finished: list[list[Hypothesis]], best_alive: list[float], limits: list[int], k: int, alpha: float,
          done: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """A sentence is done when K hypotheses finished and no live one can still beat the worst of them.

    Log-probabilities only fall as a hypothesis grows, and the length penalty
    divides by at most lp(limit + 1), so `best_alive / lp(limit + 1)` bounds
    what any live hypothesis can still reach: stopping then loses nothing.
    """
    out = done.clone()
    for b, (hyps, alive) in enumerate(zip(finished, best_alive, strict=True)):
        if out[b] or len(hyps) < k:
            continue
        bound = alive / length_penalty(limits[b] + 1, alpha) if alpha > 0 else alive
        out[b] = hyps[-1].score >= bound
    return out


def _collect_finished(
    finished: list[list[Hypothesis]],
    is_eos: torch.Tensor,
    top_scores: torch.Tensor,
    top_beam: torch.Tensor,
    tokens: torch.Tensor,
    history: torch.Tensor | None,
    src_len: torch.Tensor,
    k: int,
    alpha: float,
) -> None:
    """Finished hypotheses: EOS candidates ranked within the top K (B, 2K); each sentence keeps its K best."""
    hits = (is_eos[:, :k] & torch.isfinite(top_scores[:, :k])).nonzero().tolist()
    for b, rank in hits:
        row = b * k + int(top_beam[b, rank])
        seq = tokens[row, 1:].tolist()
        attn = history[row, :, : int(src_len[b])].cpu() if history is not None else None
        norm = float(top_scores[b, rank]) / length_penalty(len(seq) + 1, alpha)
        finished[b] = sorted([*finished[b], Hypothesis(seq, norm, attn)], key=lambda h: -h.score)[:k]


@torch.no_grad()
def beam_search(
    model: Seq2Seq,
    src: torch.Tensor,
    src_len: torch.Tensor,
    beam: int,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 1.0,
    n_best: int = 1,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns the `n_best` best hypotheses of every sentence, best first.

    Each step takes the 2K best continuations of the K beams: those ending in
    EOS within the top K are finished, the best K others go on. A sentence is
    done when its K best finished hypotheses cannot be beaten any more (see
    `_done`), or at its length limit, where only EOS is allowed.
    """
    if beam < 1 or not 1 <= n_best <= beam:
        raise ValueError(f"need beam >= 1 and 1 <= n_best <= beam, got beam={beam}, n_best={n_best}")
    batch, k, device = src.size(0), beam, src.device
    limits = max_lengths(src_len, max_len_a, max_len_b, model.max_output_tokens).to(device)
    flat = torch.arange(batch, device=device).repeat_interleave(k)  # (B*K,)
    state = model.encode(src, src_len).select(flat)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    tokens = torch.full((batch * k, 1), BOS, dtype=torch.long, device=device)
    history: torch.Tensor | None = None  # (B*K, t, S) attention so far
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for t in range(int(limits.max()) + 1):
        out = model.decode(tokens[:, -1:], state)
        at_limit = (limits <= t).repeat_interleave(k)
        logp = step_log_probs(out.logits, at_limit, t, min_len, tokens[:, 1:], no_repeat_ngram)  # (B*K, V)
        vocab = logp.size(-1)
        cand = (scores.view(-1, 1) + logp).view(batch, k * vocab)  # (B, K*V)
        cand[done] = float("-inf")
        top_scores, top_idx = cand.topk(2 * k, dim=1)  # (B, 2K)
        top_beam, top_tok = top_idx // vocab, top_idx % vocab  # (B, 2K)
        is_eos = top_tok == EOS
        step_attn = out.attention[:, -1:] if out.attention is not None else None  # (B*K, 1, S)
        if step_attn is not None:
            history = step_attn if history is None else torch.cat([history, step_attn], dim=1)

        _collect_finished(finished, is_eos, top_scores, top_beam, tokens, history, src_len, k, alpha)

        # The K best non-EOS candidates continue (at most K of the 2K are EOS).
        rank = (is_eos.float() * 2 * k + torch.arange(2 * k, device=device)).argsort(dim=1)[:, :k]  # (B, K)
        scores = top_scores.gather(1, rank)
        done = _done(finished, scores.max(dim=1).values.tolist(), limits.tolist(), k, alpha, done)
        if bool(done.all()):
            break
        keep = (torch.arange(batch, device=device)[:, None] * k + top_beam.gather(1, rank)).view(-1)  # (B*K,)
        state = out.state.reorder(keep)  # rows move only among each sentence's beams
        tokens = torch.cat([tokens[keep], top_tok.gather(1, rank).view(-1, 1)], dim=1)
        if history is not None:
            history = history[keep]
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def translate_ids(
    model: Seq2Seq,
    src: torch.Tensor,
    src_len: torch.Tensor,
    beam: int = 1,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    alpha: float = 1.0,
    n_best: int = 1,
    min_len: int = 0,
    no_repeat_ngram: int = 0,
) -> list[list[Hypothesis]]:
    """The `n_best` best hypotheses per sentence: greedy for beam 1 (and one), else beam search.

    `beam` is at least `n_best` (DecodingConfig.beam_for makes it so)."""
    if beam < n_best:
        raise ValueError(f"a beam of {beam} cannot return {n_best} hypotheses: use DecodingConfig.beam_for")
    if beam == 1:
        return [[h] for h in greedy(model, src, src_len, max_len_a, max_len_b, min_len, no_repeat_ngram)]
    return beam_search(model, src, src_len, beam, max_len_a, max_len_b, alpha, n_best, min_len, no_repeat_ngram)
