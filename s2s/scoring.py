"""Scoring on detokenized, cased text with the reference packages; never a home-made metric.

sacreBLEU gives BLEU, chrF and TER; Google's `rouge-score` gives ROUGE-1,
ROUGE-2 and ROUGE-L (F-measure, averaged over sentences, x 100); the names
and directions are `s2s.metrics`'. Its own module because validation,
evaluation and the promotion gate all score: a change to any one of them
must not make DVC retrain for the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from s2s.metrics import METRIC_NAMES, metric

ROUGE = ("rouge1", "rouge2", "rougeL")
ROUGE_SIGNATURE = "rouge-score|F-measure|mean over sentences|x100|tok:lowercase unicode letters and digits|stemmer:no"


class _UnicodeTokenizer:
    """rouge-score's default tokenization (lowercase, runs of letters and digits) for every script, not ASCII alone.

    The default one replaces everything outside [a-z0-9] with a space, which splits German "Häuser" into
    "h" and "user"; on ASCII text both give the same tokens.
    """

    _token = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._token.findall(text.lower())


def rouge(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures, each the mean over sentence pairs, x 100."""
    from rouge_score.rouge_scorer import RougeScorer  # imported when used: it pulls in nltk and absl

    scorer = RougeScorer(list(ROUGE), tokenizer=_UnicodeTokenizer())
    totals = dict.fromkeys(ROUGE, 0.0)
    for hypothesis, reference in zip(hypotheses, references, strict=True):
        for name, result in scorer.score(reference, hypothesis).items():  # (target, prediction)
            totals[name] += result.fmeasure
    return {name: round(100 * total / max(len(hypotheses), 1), 2) for name, total in totals.items()}


def score(hypotheses: list[str], references: list[str], metrics: Iterable[str] = METRIC_NAMES) -> dict[str, Any]:
    """The named metrics of one reference set, with each metric's signature."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF
    from sacrebleu.metrics.ter import TER

    wanted = [metric(name).name for name in metrics]
    out: dict[str, Any] = {}
    for name, cls in (("bleu", BLEU), ("chrf", CHRF), ("ter", TER)):
        if name in wanted:
            scorer = cls()
            out[name] = round(scorer.corpus_score(hypotheses, [references]).score, 2)
            out[f"{name}_signature"] = str(scorer.get_signature())
    if any(name in wanted for name in ROUGE):
        out.update({name: value for name, value in rouge(hypotheses, references).items() if name in wanted})
        out["rouge_signature"] = ROUGE_SIGNATURE
    return out
