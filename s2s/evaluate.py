"""The evaluate stage's library: decode the test split, score it, write metrics, hypotheses and attention maps."""

from __future__ import annotations

import csv
import logging
import time
from pathlib import Path

from sacrebleu.metrics.bleu import BLEU

from s2s.config import EvaluateConfig
from s2s.eval_records import DecodingScores, EvalReport
from s2s.layout import read_prepared
from s2s.metrics import METRIC_NAMES
from s2s.scoring import score
from s2s.translate import Translator

log = logging.getLogger(__name__)


def length_buckets(
    sources: list[str], hypotheses: list[str], references: list[str], edges: tuple[int, ...] = (10, 20)
) -> dict[str, dict[str, float]]:
    """BLEU by source length in words: shows whether long inputs are handled."""
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
            "bleu": round(BLEU().corpus_score([hypotheses[i] for i in idx], [[references[i] for i in idx]]).score, 2),
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


def decode_and_score(cfg: EvaluateConfig, translator: Translator, sources: list[str], references: list[str]) -> DecodingScores:
    """Every metric of one more decoding of the test set (`evaluate.also`), with its speed."""
    start = time.perf_counter()
    hypotheses = translator.translate(sources, cfg)
    seconds = time.perf_counter() - start
    scores = {name: value for name, value in score(hypotheses, references).items() if name in METRIC_NAMES}
    log.info("%s: test %s  %d sentences %.1f s", cfg.decoding_name,
             "  ".join(f"{name} {value:.2f}" for name, value in scores.items()), len(sources), seconds)  # fmt: skip
    return DecodingScores(**scores, beam_size=cfg.beam_size, decode_seconds=round(seconds, 2),
                          sentences_per_second=round(len(sources) / seconds, 1))  # fmt: skip


def run(
    cfg: EvaluateConfig,
    translator: Translator,
    prepared: Path,
    metrics_path: Path,
    hyps_path: Path,
    attention_dir: Path | None = None,
) -> EvalReport:
    pairs = read_prepared(prepared, "test")
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    start = time.perf_counter()
    hypotheses = translator.translate(sources, cfg)
    seconds = time.perf_counter() - start
    copied = score(sources, references)
    report = EvalReport(
        decoding=cfg.decoding_name,
        **score(hypotheses, references),
        **{f"copy_source_{name}": copied[name] for name in METRIC_NAMES},
        by_source_length=length_buckets(sources, hypotheses, references),
        sentences=len(sources),
        beam_size=cfg.beam_size,
        decode_seconds=round(seconds, 2),
        sentences_per_second=round(len(sources) / seconds, 1),
        device=str(translator.device),
        also={name: decode_and_score(other, translator, sources, references) for name, other in cfg.also_decodings().items()},
    )
    report.write(metrics_path)
    hyps_path.parent.mkdir(parents=True, exist_ok=True)
    with hyps_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["source", "reference", "hypothesis"])
        writer.writerows(zip(sources, references, hypotheses, strict=True))
    log.info(
        "test BLEU %.2f  chrF %.2f  TER %.2f  ROUGE-1/2/L %.2f/%.2f/%.2f  (copying the source: BLEU %.2f)  %d sentences %.1f s",
        report.bleu, report.chrf, report.ter, report.rouge1, report.rouge2, report.rougeL, report.copy_source_bleu,
        len(sources), seconds,
    )  # fmt: skip
    log.info("signature: %s", report.bleu_signature)
    if attention_dir is not None:
        maps = draw_attention(cfg, translator, sources, attention_dir)
        log.info("%d attention maps in %s", len(maps), attention_dir)
    return report
