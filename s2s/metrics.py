"""The metric names s2s computes and which way each one is better: the one owner of both.

Configuration validates `train.select_metric` and `promote.metric` against these names; checkpoint selection,
early stopping and the promotion gate ask `metric(name)` which way is better (TER is an edit rate: lower is
better). No scoring code here, so that the config, which every stage imports, does not pull in the scorers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

MetricName = Literal["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL", "exact_match"]
METRIC_NAMES: tuple[str, ...] = get_args(MetricName)
# Several references per item: ROUGE takes the best F per item (rouge-score's score_multi) or the mean over them.
RougeMulti = Literal["best", "mean"]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool

    def gain(self, new: float, old: float) -> float:
        """How much better `new` is than `old`: positive when it is better, whichever way the metric runs."""
        return new - old if self.higher_is_better else old - new

    def better(self, new: float, old: float) -> bool:
        return self.gain(new, old) > 0

    def best(self, values: Iterable[float]) -> float:
        return max(values) if self.higher_is_better else min(values)


METRICS: dict[str, Metric] = {name: Metric(name, higher_is_better=name != "ter") for name in METRIC_NAMES}


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRIC_NAMES)}") from None
