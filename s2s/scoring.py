"""Scoring with sacreBLEU on detokenized, cased text; never a home-made BLEU.

Its own module because training (validation BLEU), evaluation and the
promotion gate all score: a change to any one of them must not make DVC
retrain for the others.
"""

from __future__ import annotations

from typing import Any

from sacrebleu.metrics import BLEU, CHRF, TER


def score(hypotheses: list[str], references: list[str], with_ter: bool = True) -> dict[str, Any]:
    """BLEU, chrF (and TER) of one reference set, with each metric's signature."""
    refs = [references]
    metrics: list[tuple[str, Any]] = [("bleu", BLEU()), ("chrf", CHRF())]
    if with_ter:
        metrics.append(("ter", TER()))
    out: dict[str, Any] = {}
    for name, metric in metrics:
        result = metric.corpus_score(hypotheses, refs)
        out[name] = round(result.score, 2)
        out[f"{name}_signature"] = str(metric.get_signature())
    return out
