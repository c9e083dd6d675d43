"""Sample run files (s2s.train_records, s2s.eval_records) for tests that read them without training anything."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from s2s.eval_records import DecodingScores, EvalReport
from s2s.train_records import TrainSummary

TRAIN_SUMMARY = TrainSummary(
    epochs=1, select_metric="bleu", best_valid_score=1.0, best_valid_bleu=1.0, kept="epoch 1", kept_epoch=1,
    average_valid_score=None, updates=10, resumed_at_update=0, train_pairs=400, train_pairs_too_long=0, parameters=1000,
    train_seconds=1.0, tokens_per_second=100.0, processes=1, tokens_per_second_per_process=100.0, device="cpu",
    peak_memory_mb=100.0,
)  # fmt: skip

EVAL_REPORT = EvalReport(
    decoding="greedy", bleu=1.0, bleu_signature="sig", chrf=2.0, chrf_signature="chrf-sig", ter=99.0,
    ter_signature="ter-sig", rouge1=3.0, rouge2=1.0, rougeL=3.0, rouge_signature="rouge-sig", exact_match=0.0,
    exact_match_signature="em-sig", copy_source_exact_match=0.0, copy_source_bleu=0.1,
    copy_source_chrf=5.0, copy_source_ter=100.0, copy_source_rouge1=4.0, copy_source_rouge2=0.5, copy_source_rougeL=4.0,
    by_source_length={"1-10": {"sentences": 10, "bleu": 1.0}}, sentences=10, beam_size=1, decode_seconds=0.5,
    sentences_per_second=20.0, device="cpu",
)  # fmt: skip


def eval_report(**changes: Any) -> EvalReport:
    return replace(EVAL_REPORT, **changes)


def decoding_scores(**changes: Any) -> DecodingScores:
    base = DecodingScores(bleu=1.0, chrf=2.0, ter=99.0, rouge1=3.0, rouge2=1.0, rougeL=3.0, exact_match=0.0, beam_size=1,
                          decode_seconds=0.5, sentences_per_second=20.0)  # fmt: skip
    return replace(base, **changes)
