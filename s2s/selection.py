"""Which weights training keeps and when it stops: pure decisions over the validation history.

One comparison decides everything, `at_least_as_good`: a candidate (a new epoch, or the average of the last
epochs) replaces the kept weights when it is at least as good, so a tie keeps the newer, longer-trained ones;
and the run has made progress only when the best score rose, which a tie does not. `train.select_metric`
says which way is better (s2s.metrics).
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.metrics import METRICS, Metric


@dataclass(frozen=True)
class Kept:
    """Whose weights the model file holds, and their validation scores."""

    score: float  # train.select_metric
    bleu: float
    epoch: int | None = None  # one epoch's weights ...
    averaged: tuple[int, ...] = ()  # ... or the average of these epochs'

    def describe(self) -> str:
        return f"average of epochs {self.averaged[0]}-{self.averaged[-1]}" if self.averaged else f"epoch {self.epoch}"


def at_least_as_good(candidate: float, kept: float, direction: Metric) -> bool:
    """The tie rule: a tie counts for the candidate, the newer weights."""
    return direction.gain(candidate, kept) >= 0


def improves(score: float, best: float | None, direction: Metric) -> bool:
    """Whether `score` replaces the kept weights' `best` (None: nothing kept yet)."""
    return best is None or at_least_as_good(score, best, direction)


def keep_epoch(kept: Kept | None, epoch: int, score: float, bleu: float, direction: Metric) -> Kept | None:
    """The new Kept when epoch `epoch`'s weights replace `kept`, else None (keep what is kept)."""
    return Kept(score, bleu, epoch=epoch) if improves(score, kept.score if kept else None, direction) else None


def keep_average(kept: Kept | None, epochs: tuple[int, ...], score: float, bleu: float, direction: Metric) -> Kept | None:
    """The new Kept when the average of `epochs` replaces `kept`, else None."""
    return Kept(score, bleu, averaged=epochs) if improves(score, kept.score if kept else None, direction) else None


def stop_early(scores: list[float], patience: int, direction: Metric = METRICS["bleu"]) -> bool:
    """The last `patience` epochs did not raise the best score of the epochs before them (0: never stop)."""
    if not patience or len(scores) <= patience:
        return False
    return at_least_as_good(direction.best(scores[:-patience]), direction.best(scores[-patience:]), direction)
