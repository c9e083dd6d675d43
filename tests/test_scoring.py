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
    with pytest.raises(
        ValueError, match="unknown metric 'meteor'; choose one of bleu, chrf, ter, rouge1, rouge2, rougeL, exact_match"
    ):
        score(HYPOTHESES, REFERENCES, metrics=("meteor",))


# Three references per item, as AESLC's dev and test sets have them.
MULTI = [
    ["the cat is on the mat", "a cat sat on a mat", "there is a cat on the mat"],
    ["a man rides a bike along the road", "a man is riding a bicycle", "man on a red bike"],
    ["two dogs are playing in the snow", "dogs play", "two dogs playing"],
    ["hello", "hi there", "greetings"],
]


def test_several_references_score_as_sacrebleu_and_rouge_score_do() -> None:
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF
    from sacrebleu.metrics.ter import TER

    streams = [[refs[k] for refs in MULTI] for k in range(3)]
    ours = score(HYPOTHESES, MULTI)
    assert ours["bleu"] == round(BLEU().corpus_score(HYPOTHESES, streams).score, 2)
    assert ours["chrf"] == round(CHRF().corpus_score(HYPOTHESES, streams).score, 2)
    assert ours["ter"] == round(TER().corpus_score(HYPOTHESES, streams).score, 2)
    assert ours["bleu_signature"].startswith("nrefs:3|")
    assert ours["bleu"] > score(HYPOTHESES, [refs[0] for refs in MULTI])["bleu"]  # more references, more matches

    scorer = RougeScorer(list(ROUGE))  # rouge-score's own tokenizer: identical on ASCII text
    best = {name: sum(scorer.score_multi(refs, h)[name].fmeasure for h, refs in zip(HYPOTHESES, MULTI, strict=True))
            for name in ROUGE}  # fmt: skip
    mean = {name: sum(sum(scorer.score(r, h)[name].fmeasure for r in refs) / 3 for h, refs in zip(HYPOTHESES, MULTI, strict=True))
            for name in ROUGE}  # fmt: skip
    assert rouge(HYPOTHESES, MULTI, "best") == {name: round(100 * best[name] / 4, 2) for name in ROUGE}
    assert rouge(HYPOTHESES, MULTI, "mean") == {name: round(100 * mean[name] / 4, 2) for name in ROUGE}
    assert rouge(HYPOTHESES, MULTI, "mean")["rougeL"] < rouge(HYPOTHESES, MULTI, "best")["rougeL"]
    assert score(HYPOTHESES, MULTI, multi="mean")["rouge_signature"].startswith(
        "rouge-score|F-measure|mean over items|refs:3|multi:mean|"
    )
    with pytest.raises(ValueError, match="every item needs the same number"):
        score(HYPOTHESES, [*MULTI[:3], ["one"]])


def test_stemming_follows_rouge_score() -> None:
    stemmed = RougeScorer(list(ROUGE), use_stemmer=True)
    expected = sum(stemmed.score(r, h)["rouge1"].fmeasure for h, r in zip(HYPOTHESES, REFERENCES, strict=True))
    ours = rouge(HYPOTHESES, REFERENCES, stemmer=True)
    assert ours["rouge1"] == round(100 * expected / 4, 2) != rouge(HYPOTHESES, REFERENCES)["rouge1"]  # "playing" ~ "play"
    assert score(HYPOTHESES, REFERENCES, ("rouge1",), stemmer=True)["rouge_signature"].endswith("stemmer:porter")


def test_exact_match_counts_outputs_equal_to_a_reference_after_whitespace() -> None:
    hyps = ["SELECT  name FROM t ", "select name from t", "two dogs playing", "x"]
    refs = [["SELECT name FROM t", "-"], ["SELECT name FROM t", "-"], ["dogs play", "two dogs playing"], ["y", "-"]]
    # Runs of whitespace are one space, the ends stripped; case counts (code is cased); any reference may match.
    assert score(hyps, refs, ("exact_match",)) == {
        "exact_match": 50.0,
        "exact_match_signature": "exact match|refs:2|whitespace normalised|cased|x100",
    }
