"""s2s/scoring.py: the reference packages' numbers, with their signatures."""

from __future__ import annotations

import pytest
from rouge_score.rouge_scorer import RougeScorer

from s2s.metrics import METRIC_NAMES
from s2s.scoring import ROUGE, rouge, score

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
