"""s2s/selection.py: which weights training keeps and when it stops, on one tie rule."""

from __future__ import annotations

from s2s.metrics import METRICS
from s2s.selection import Kept, at_least_as_good, improves, keep_average, keep_epoch, stop_early

BLEU, TER = METRICS["bleu"], METRICS["ter"]


def test_selecting_on_ter_prefers_the_lower_score() -> None:
    ter = METRICS["ter"]
    assert improves(60.0, None, ter) and improves(55.0, 60.0, ter) and improves(55.0, 55.0, ter)
    assert not improves(61.0, 60.0, ter)
    assert stop_early([60.0, 55.0, 56.0, 57.0], 2, ter)  # two epochs without going below 55
    assert not stop_early([60.0, 55.0, 56.0, 54.0], 2, ter)
    rising = [50.0, 55.0, 56.0, 57.0]
    assert stop_early(rising, 2, ter) and not stop_early(rising, 2, METRICS["bleu"])  # worse for TER, better for BLEU


def test_stop_early() -> None:
    assert not stop_early([10.0, 12.0, 11.0], 0)  # patience 0: never
    assert not stop_early([10.0, 12.0], 2)  # too few epochs to judge
    assert stop_early([10.0, 12.0, 11.0, 12.0], 2)  # two epochs without beating 12.0
    assert not stop_early([10.0, 12.0, 11.0, 12.5], 2)


def test_one_tie_rule_a_tie_keeps_the_newer_weights_but_is_no_progress() -> None:
    assert at_least_as_good(30.0, 30.0, BLEU) and at_least_as_good(30.0, 30.0, TER)
    first = keep_epoch(None, 1, 30.0, 30.0, BLEU)
    assert first == Kept(30.0, 30.0, epoch=1) and first.describe() == "epoch 1"
    assert keep_epoch(first, 2, 30.0, 29.0, BLEU) == Kept(30.0, 29.0, epoch=2)  # a tie: the later epoch
    assert keep_epoch(first, 2, 29.9, 29.0, BLEU) is None  # worse: the kept weights stay
    assert stop_early([10.0, 30.0, 30.0, 30.0], 2, BLEU)  # ... yet ties bring no progress: patience runs out


def test_the_average_replaces_the_kept_epoch_on_the_same_rule_and_names_no_epoch() -> None:
    best = Kept(30.0, 30.0, epoch=3)
    tied = keep_average(best, (2, 3, 4), 30.0, 30.5, BLEU)
    assert tied == Kept(30.0, 30.5, averaged=(2, 3, 4)) and tied.epoch is None
    assert tied.describe() == "average of epochs 2-4"
    assert keep_average(best, (2, 3, 4), 29.0, 29.0, BLEU) is None
    assert keep_average(Kept(50.0, 10.0, epoch=1), (1, 2), 49.0, 11.0, TER) == Kept(49.0, 11.0, averaged=(1, 2))
