"""The evaluate stage's library: decode the test split, score it, write metrics, hypotheses and attention maps."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from sacrebleu.metrics.bleu import BLEU

from s2s.config import EvaluateConfig
from s2s.eval_records import DecodingScores, EvalReport
from s2s.layout import Example, read_examples
from s2s.metrics import METRIC_NAMES
from s2s.progress import Progress
from s2s.scoring import References, per_item, score, streams
from s2s.translate import Translator

log = logging.getLogger(__name__)


def length_buckets(
    sources: list[str], hypotheses: list[str], references: References, edges: tuple[int, ...] = (10, 20)
) -> dict[str, dict[str, float]]:
    """BLEU by source length in words: shows whether long inputs are handled."""
    items = per_item(references)
    buckets: dict[str, list[int]] = {}
    for i, src in enumerate(sources):
        n = len(src.split())
        lower = max((e for e in edges if n > e), default=0)
        upper = next((e for e in edges if n <= e), None)
        name = f"{lower + 1}-{upper}" if upper is not None else f">{lower}"
        buckets.setdefault(name, []).append(i)
    return {
        name: {
            "sentences": len(idx),
            "bleu": round(BLEU().corpus_score([hypotheses[i] for i in idx], streams([items[i] for i in idx])).score, 2),
        }
        for name, idx in sorted(buckets.items(), key=lambda kv: min(len(sources[i].split()) for i in kv[1]))
    }


def draw_attention(cfg: EvaluateConfig, translator: Translator, sources: list[str], out_dir: Path) -> list[Path]:
    """Heatmaps for the first `cfg.attention_maps` sentences; none for models without attention."""
    from s2s.plots import attention_heatmap  # matplotlib only when maps are drawn

    out_dir.mkdir(parents=True, exist_ok=True)
    translations = translator.translate_with_attention(sources[: cfg.attention_maps], cfg)
    return [
        attention_heatmap(t, out_dir / f"sentence_{i + 1:02d}.png") for i, t in enumerate(translations) if t.attention is not None
    ]


def scores_of(cfg: EvaluateConfig, hypotheses: list[str], examples: list[Example]) -> dict[str, object]:
    """Every metric (and signature) against the references `cfg.references` names, with its ROUGE convention."""
    references = [e.references(cfg.references) for e in examples]
    return score(hypotheses, references, multi=cfg.rouge_multi, stemmer=cfg.rouge_stemmer)


def reference_sets(cfg: EvaluateConfig, hypotheses: list[str], examples: list[Example]) -> dict[str, dict[str, float]]:
    """Where items have further references: the scores against the target alone and against the references under
    each ROUGE convention, so that figures can be compared with papers that chose another."""
    if not any(e.refs for e in examples):
        return {}
    target = [e.references("target") for e in examples]
    given = [e.references("given") for e in examples]
    out = {"target": score(hypotheses, target, stemmer=cfg.rouge_stemmer)}
    for multi in ("best", "mean"):
        out[f"references/{multi}"] = score(hypotheses, given, multi=multi, stemmer=cfg.rouge_stemmer)
    return {name: {k: v for k, v in values.items() if k in METRIC_NAMES} for name, values in out.items()}


def decode(cfg: EvaluateConfig, translator: Translator, sources: list[str]) -> tuple[list[str], float]:
    """Hypotheses of `sources` and the seconds they took, with progress in the log."""
    start = time.perf_counter()
    hypotheses = translator.translate(sources, cfg, Progress(f"decoding the test set ({cfg.decoding_name})", len(sources), log))
    return hypotheses, time.perf_counter() - start


def decode_and_score(cfg: EvaluateConfig, translator: Translator, examples: list[Example]) -> DecodingScores:
    """Every metric of one more decoding of the test set (`evaluate.also`), with its speed."""
    hypotheses, seconds = decode(cfg, translator, [e.src for e in examples])
    scores = {name: value for name, value in scores_of(cfg, hypotheses, examples).items() if name in METRIC_NAMES}
    log.info("%s: test %s  %d sentences %.1f s", cfg.decoding_name,
             "  ".join(f"{name} {value:.2f}" for name, value in scores.items()), len(examples), seconds)  # fmt: skip
    return DecodingScores(**scores, beam_size=cfg.beam_size, decode_seconds=round(seconds, 2),  # type: ignore[arg-type]
                          sentences_per_second=round(len(examples) / seconds, 1))  # fmt: skip


def write_hypotheses(path: Path, examples: list[Example], hypotheses: list[str]) -> None:
    """reports/hypotheses.tsv: [id,] source, reference (the target), [ref0, ref1, ... (further references),] hypothesis."""
    with_ids = any(e.id for e in examples)
    n_refs = max((len(e.refs) for e in examples), default=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow([*(["id"] if with_ids else []), "source", "reference", *(f"ref{k}" for k in range(n_refs)), "hypothesis"])
        for e, hypothesis in zip(examples, hypotheses, strict=True):
            writer.writerow([*([e.id] if with_ids else []), e.src, e.tgt, *e.refs, hypothesis])


def run(
    cfg: EvaluateConfig,
    translator: Translator,
    prepared: Path,
    metrics_path: Path,
    hyps_path: Path,
    attention_dir: Path | None = None,
) -> EvalReport:
    examples = read_examples(prepared, "test")
    sources = [e.src for e in examples]
    hypotheses, seconds = decode(cfg, translator, sources)
    scores, copied = scores_of(cfg, hypotheses, examples), scores_of(cfg, sources, examples)
    report = EvalReport(
        decoding=cfg.decoding_name,
        **scores,  # type: ignore[arg-type]
        **{f"copy_source_{name}": copied[name] for name in METRIC_NAMES},  # type: ignore[arg-type]
        by_source_length=length_buckets(sources, hypotheses, [e.references(cfg.references) for e in examples]),
        sentences=len(sources),
        beam_size=cfg.beam_size,
        decode_seconds=round(seconds, 2),
        sentences_per_second=round(len(sources) / seconds, 1),
        device=str(translator.device),
        also={name: decode_and_score(other, translator, examples) for name, other in cfg.also_decodings().items()},
        references=len(examples[0].references(cfg.references)) if examples else 1,
        reference_sets=reference_sets(cfg, hypotheses, examples),
    )
    report.write(metrics_path)
    write_hypotheses(hyps_path, examples, hypotheses)
    log.info(
        "test BLEU %.2f  chrF %.2f  TER %.2f  ROUGE-1/2/L %.2f/%.2f/%.2f  exact match %.2f  (copying the source: BLEU %.2f)"
        "  %d sentences %.1f s",
        report.bleu, report.chrf, report.ter, report.rouge1, report.rouge2, report.rougeL, report.exact_match,
        report.copy_source_bleu, len(sources), seconds,
    )  # fmt: skip
    for name, values in report.reference_sets.items():
        log.info("against %s: %s", name, "  ".join(f"{k} {v:.2f}" for k, v in values.items()))
    log.info("signature: %s", report.bleu_signature)
    if attention_dir is not None:
        maps = draw_attention(cfg, translator, sources, attention_dir)
        log.info("%d attention maps in %s", len(maps), attention_dir)
    return report
