"""`metrics/eval.json`, the evaluate stage's report: a frozen type with its reader and writer, the one owner of its keys.

Nothing heavy is imported here: the flow, the command line and the registry read it too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DecodingScores:
    """One more decoding of the test set (`evaluate.also`): its scores and speed."""

    bleu: float
    chrf: float
    ter: float
    rouge1: float
    rouge2: float
    rougeL: float
    exact_match: float
    beam_size: int
    decode_seconds: float
    sentences_per_second: float

    def score(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass(frozen=True)
class EvalReport:
    decoding: str  # the served decoding's name (DecodingConfig.decoding_name): greedy, beam5, ...
    bleu: float
    bleu_signature: str
    chrf: float
    chrf_signature: str
    ter: float
    ter_signature: str
    rouge1: float
    rouge2: float
    rougeL: float
    rouge_signature: str
    exact_match: float
    exact_match_signature: str
    # The trivial baseline a model must beat, in every metric the gate may use: the source copied unchanged.
    copy_source_bleu: float
    copy_source_chrf: float
    copy_source_ter: float
    copy_source_rouge1: float
    copy_source_rouge2: float
    copy_source_rougeL: float
    copy_source_exact_match: float
    by_source_length: dict[str, dict[str, float]]  # "1-10" -> {"sentences": n, "bleu": b}
    sentences: int
    beam_size: int
    decode_seconds: float
    sentences_per_second: float
    device: str
    also: dict[str, DecodingScores] = field(default_factory=dict)  # evaluate.also's decodings by name
    references: int = 1  # references per item the scores above are against (evaluate.references)
    # Where items have further references: scores against "target" alone and "references/best", "references/mean".
    reference_sets: dict[str, dict[str, float]] = field(default_factory=dict)

    def score(self, metric: str) -> float:
        """The served decoding's test score in `metric` (a s2s.metrics name)."""
        return float(getattr(self, metric))

    def copy_source(self, metric: str) -> float:
        return float(getattr(self, f"copy_source_{metric}"))

    def signatures(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if f.name.endswith("_signature")}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> EvalReport:
        values = json.loads(path.read_text(encoding="utf-8"))
        values.setdefault("decoding", "")  # written before the report named its decoding
        # Written before exact match was scored: not a score of 0, but none.
        for key in ("exact_match", "copy_source_exact_match"):
            values.setdefault(key, float("nan"))
        values.setdefault("exact_match_signature", "")
        values["also"] = {
            name: DecodingScores(**{"exact_match": float("nan"), **scores}) for name, scores in values.get("also", {}).items()
        }
        return cls(**values)
