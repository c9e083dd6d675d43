"""Metrics: the reference packages' numbers, one owner of names and directions."""

from __future__ import annotations

import pytest
from rouge_score.rouge_scorer import RougeScorer

from s2s.config import ConfigError, parse_params
from s2s.metrics import METRIC_NAMES, METRICS, metric
from s2s.scoring import ROUGE, rouge, score
from s2s.train import improves, stop_early

HYPOTHESES = ["the cat sat on the mat", "a man is riding a red bicycle down the street", "two dogs play", ""]
REFERENCES = ["the cat is on the mat", "a man rides a bike along the road", "two dogs are playing in the snow", "hello"]


def test_rouge_equals_rouge_score_on_fixed_pairs() -> None:
    reference = RougeScorer(list(ROUGE))  # the package's own default tokenizer: identical on ASCII text
    expected = {name: 0.0 for name in ROUGE}
    for hypothesis, ref in zip(HYPOTHESES, REFERENCES, strict=True):
        for name, result in reference.score(ref, hypothesis).items():
            expected[name] += result.fmeasure
    ours = rouge(HYPOTHESES, REFERENCES)
    assert ours == {name: round(100 * total / len(HYPOTHESES), 2) for name, total in expected.items()}
    assert 0 < ours["rouge2"] < ours["rougeL"] <= ours["rouge1"] < 100


def test_rouge_keeps_non_ascii_words_whole() -> None:
    # rouge-score's default tokenizer reads "Häuser" as "h" + "user", so "Hauser" would share a token with it.
    assert rouge(["Die Hauser"], ["Die Häuser"])["rouge1"] == 50.0
    assert rouge(["Die Häuser"], ["die HÄUSER"])["rouge1"] == 100.0


def test_score_computes_the_metrics_asked_for_with_signatures() -> None:
    everything = score(HYPOTHESES, REFERENCES)
    assert set(METRIC_NAMES) <= set(everything)
    assert everything["bleu_signature"].startswith("nrefs:1|case:mixed") and "rouge-score" in everything["rouge_signature"]
    assert set(score(HYPOTHESES, REFERENCES, metrics=("ter",))) == {"ter", "ter_signature"}
    assert score(HYPOTHESES, REFERENCES, metrics=("rougeL",)) == {
        "rougeL": everything["rougeL"],
        "rouge_signature": everything["rouge_signature"],
    }
    with pytest.raises(ValueError, match="unknown metric 'meteor'; choose one of bleu, chrf, ter, rouge1, rouge2, rougeL"):
        score(HYPOTHESES, REFERENCES, metrics=("meteor",))


def test_directions_ter_is_the_lower_better_one() -> None:
    assert [name for name in METRIC_NAMES if not METRICS[name].higher_is_better] == ["ter"]
    ter, bleu = metric("ter"), metric("bleu")
    assert ter.better(40.0, 45.0) and not ter.better(45.0, 40.0) and ter.gain(40.0, 45.0) == 5.0
    assert bleu.better(45.0, 40.0) and bleu.best([1.0, 3.0, 2.0]) == 3.0 and ter.best([1.0, 3.0, 2.0]) == 1.0


def test_selecting_on_ter_prefers_the_lower_score() -> None:
    ter = METRICS["ter"]
    assert improves(60.0, None, ter) and improves(55.0, 60.0, ter) and improves(55.0, 55.0, ter)
    assert not improves(61.0, 60.0, ter)
    assert stop_early([60.0, 55.0, 56.0, 57.0], 2, ter)  # two epochs without going below 55
    assert not stop_early([60.0, 55.0, 56.0, 54.0], 2, ter)
    rising = [50.0, 55.0, 56.0, 57.0]
    assert stop_early(rising, 2, ter) and not stop_early(rising, 2, METRICS["bleu"])  # worse for TER, better for BLEU


def test_config_accepts_every_metric_and_the_bound_that_fits_it() -> None:
    for name in METRIC_NAMES:
        params = parse_params({"train": {"select_metric": name}, "promote": {"metric": name}})
        assert params.train.select_metric == params.promote.metric == name
    assert parse_params({"promote": {"metric": "ter", "max_score": 70}}).promote.max_score == 70
    with pytest.raises(ConfigError, match=r"promote: .*min_score bounds metrics where higher is better; ter .*max_score"):
        parse_params({"promote": {"metric": "ter", "min_score": 10}})
    with pytest.raises(ConfigError, match=r"promote: .*max_score bounds metrics where lower is better; bleu: use min_score"):
        parse_params({"promote": {"metric": "bleu", "max_score": 10}})
    with pytest.raises(ConfigError, match=r"train\.select_metric: .*'bleu', 'chrf', 'ter', 'rouge1', 'rouge2' or 'rougeL'"):
        parse_params({"train": {"select_metric": "loss"}})
