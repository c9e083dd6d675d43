"""s2s/metrics.py: the one owner of metric names and which way each is better."""

from __future__ import annotations

import pytest

from s2s.config import ConfigError, PromoteConfig, parse_params
from s2s.metrics import METRIC_NAMES, METRICS, metric


def test_directions_ter_is_the_lower_better_one() -> None:
    assert [name for name in METRIC_NAMES if not METRICS[name].higher_is_better] == ["ter"]
    ter, bleu = metric("ter"), metric("bleu")
    assert ter.better(40.0, 45.0) and not ter.better(45.0, 40.0) and ter.gain(40.0, 45.0) == 5.0
    assert bleu.better(45.0, 40.0) and bleu.best([1.0, 3.0, 2.0]) == 3.0 and ter.best([1.0, 3.0, 2.0]) == 1.0


def test_config_accepts_every_metric_and_the_bound_that_fits_it() -> None:
    for name in METRIC_NAMES:
        params = parse_params({"train": {"select_metric": name}, "promote": {"metric": name}})
        assert params.train.select_metric == params.promote.metric == name
    assert parse_params({"promote": {"metric": "ter", "max_score": 70}}).promote.max_score == 70
    with pytest.raises(ConfigError, match=r"promote: .*min_score bounds metrics where higher is better; ter .*max_score"):
        parse_params({"promote": {"metric": "ter", "min_score": 10}})
    with pytest.raises(ConfigError, match=r"promote: .*max_score bounds metrics where lower is better; bleu: use min_score"):
        parse_params({"promote": {"metric": "bleu", "max_score": 10}})
    with pytest.raises(
        ConfigError, match=r"train\.select_metric: .*'bleu', 'chrf', 'ter', 'rouge1', 'rouge2', 'rougeL' or 'exact_match'"
    ):
        parse_params({"train": {"select_metric": "loss"}})


def test_the_gate_bound_follows_the_metric_direction() -> None:
    assert PromoteConfig(metric="bleu", min_score=12.0).bound == 12.0
    assert PromoteConfig(metric="ter", max_score=70.0).bound == 70.0 and PromoteConfig(metric="ter").bound is None
    with pytest.raises(ValueError, match="unknown metric 'loss'"):
        metric("loss")
