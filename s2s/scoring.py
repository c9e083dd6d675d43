"""Scoring on detokenized, cased text with the reference packages; never a home-made metric.

sacreBLEU gives BLEU, chrF and TER; Google's `rouge-score` gives ROUGE-1,
ROUGE-2 and ROUGE-L (F-measure, averaged over items, x 100); the names
and directions are `s2s.metrics`'. Its own module because validation,
evaluation and the promotion gate all score: a change to any one of them
must not make DVC retrain for the others.

An item may have several references (AESLC's three annotated subject lines):
sacreBLEU takes one reference stream per reference; ROUGE takes per item the
best F-measure over its references (`best`, rouge-score's `score_multi`) or
their mean (`mean`); exact match counts an output equal to any reference.
Every signature names the number of references and the convention.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from s2s.metrics import METRIC_NAMES, RougeMulti, metric

ROUGE = ("rouge1", "rouge2", "rougeL")
# Per item, its references; a flat list of strings is one reference per item.
References = Sequence[str] | Sequence[Sequence[str]]


class _UnicodeTokenizer:
    """rouge-score's default tokenization (lowercase, runs of letters and digits) for every script, not ASCII alone.

    The default one replaces everything outside [a-z0-9] with a space, which splits German "Häuser" into
    "h" and "user"; on ASCII text both give the same tokens. With `stemmer`, words longer than three characters
    are Porter-stemmed, as rouge-score's own tokenizer does (it ignores `use_stemmer` when given a tokenizer).
    """

    _token = re.compile(r"[^\W_]+")

    def __init__(self, stemmer: bool = False) -> None:
        from nltk.stem import porter  # rouge-score's dependency, and its stemmer

        self.stemmer = porter.PorterStemmer() if stemmer else None

    def tokenize(self, text: str) -> list[str]:
        tokens = self._token.findall(text.lower())
        if self.stemmer is None:
            return tokens
        return [self.stemmer.stem(t) if len(t) > 3 else t for t in tokens]


def per_item(references: References) -> list[list[str]]:
    """[[ref, ...], ...]: each item's references, whether given one per item or several."""
    return [[r] if isinstance(r, str) else list(r) for r in references]


def streams(references: References) -> list[list[str]]:
    """sacreBLEU's layout: one list per reference position, each as long as the hypotheses."""
    items = per_item(references)
    counts = {len(refs) for refs in items}
    if len(counts) > 1 or 0 in counts:
        raise ValueError(f"every item needs the same number (>= 1) of references; got {sorted(counts)}")
    return [list(stream) for stream in zip(*items, strict=True)] if items else [[]]


def normalise(text: str) -> str:
    """Exact match compares texts with runs of whitespace made one space and both ends stripped; case counts."""
    return " ".join(text.split())


def exact_match(hypotheses: list[str], references: References) -> float:
    """Share of outputs equal to one of their references (after `normalise`), x 100."""
    items = per_item(references)
    hits = sum(normalise(h) in {normalise(r) for r in refs} for h, refs in zip(hypotheses, items, strict=True))
    return round(100 * hits / max(len(hypotheses), 1), 2)


def rouge_signature(n_refs: int, multi: RougeMulti, stemmer: bool) -> str:
    over = f"|refs:{n_refs}|multi:{multi}" if n_refs > 1 else ""
    return (f"rouge-score|F-measure|mean over items{over}|x100|tok:lowercase unicode letters and digits|"
            f"stemmer:{'porter' if stemmer else 'no'}")  # fmt: skip


def rouge(hypotheses: list[str], references: References, multi: RougeMulti = "best", stemmer: bool = False) -> dict[str, float]:
    """ROUGE-1, ROUGE-2 and ROUGE-L F-measures, each the mean over items, x 100; several references per `multi`."""
    from rouge_score.rouge_scorer import RougeScorer  # imported when used: it pulls in nltk and absl

    if multi not in ("best", "mean"):
        raise ValueError(f"rouge multi-reference convention {multi!r}: choose best or mean")
    scorer = RougeScorer(list(ROUGE), tokenizer=_UnicodeTokenizer(stemmer))
    totals = dict.fromkeys(ROUGE, 0.0)
    for hypothesis, refs in zip(hypotheses, per_item(references), strict=True):
        if multi == "best" or len(refs) == 1:
            for name, result in scorer.score_multi(refs, hypothesis).items():  # (targets, prediction)
                totals[name] += result.fmeasure
            continue
        for ref in refs:
            for name, result in scorer.score(ref, hypothesis).items():
                totals[name] += result.fmeasure / len(refs)
    return {name: round(100 * total / max(len(hypotheses), 1), 2) for name, total in totals.items()}


def score(
    hypotheses: list[str],
    references: References,
    metrics: Iterable[str] = METRIC_NAMES,
    multi: RougeMulti = "best",
    stemmer: bool = False,
) -> dict[str, Any]:
    """The named metrics against the references (one or several per item), with each metric's signature."""
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.chrf import CHRF
    from sacrebleu.metrics.ter import TER

    wanted = [metric(name).name for name in metrics]
    refs = streams(references) if hypotheses else [[]]
    out: dict[str, Any] = {}
    for name, cls in (("bleu", BLEU), ("chrf", CHRF), ("ter", TER)):
        if name in wanted:
            scorer = cls()
            out[name] = round(scorer.corpus_score(hypotheses, refs).score, 2)
            out[f"{name}_signature"] = str(scorer.get_signature())
    if any(name in wanted for name in ROUGE):
        out.update({name: value for name, value in rouge(hypotheses, references, multi, stemmer).items() if name in wanted})
        out["rouge_signature"] = rouge_signature(len(refs), multi, stemmer)
    if "exact_match" in wanted:
        out["exact_match"] = exact_match(hypotheses, references)
        out["exact_match_signature"] = f"exact match|refs:{len(refs)}|whitespace normalised|cased|x100"
    return out
