"""The evaluate stage's library (s2s/evaluate.py): the served decoding's metrics, and the ones `evaluate.also` adds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from support import run_inputs

from s2s import evaluate, layout, stage_status, tokenizer
from s2s.config import ConfigError, EvaluateConfig, ModelConfig, RNNConfig, TokenizerConfig, parse_params
from s2s.corpus import generate_pairs
from s2s.eval_records import EvalReport
from s2s.models import build_model
from s2s.scoring import score
from s2s.stages.evaluate import STOPPED
from s2s.tokenizer import Tokenizers
from s2s.translate import Translator


def test_also_scores_each_other_decoding_beside_the_served_one(tmp_path: Path) -> None:
    pairs = generate_pairs(300, 4)
    tokenizer.train(TokenizerConfig(vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], tmp_path / "tok")
    tok = Tokenizers.load(tmp_path / "tok")
    torch.manual_seed(0)
    vocab = tok.src.get_piece_size()
    model = build_model(ModelConfig(rnn=RNNConfig(emb_dim=16, hidden=16)), vocab, vocab)
    translator = Translator(model, tok, torch.device("cpu"))
    layout.write_prepared({"train": pairs[:10], "valid": pairs[:10], "test": pairs[:40]}, tmp_path / "prepared")
    test = pairs[:40]
    cfg = EvaluateConfig(beam_size=3, max_len_b=5, also=("greedy", "beam3", "beam2"), attention_maps=0)

    metrics = evaluate.run(cfg, translator, tmp_path / "prepared", tmp_path / "eval.json", tmp_path / "hyps.tsv")

    assert metrics.decoding == "beam3" and list(metrics.also) == ["greedy", "beam2"]  # beam3 is the served one
    greedy = translator.translate([s for s, _ in test], cfg.model_copy(update={"beam_size": 1}))
    expected = score(greedy, [t for _, t in test])
    assert {k: metrics.also["greedy"].score(k) for k in ("bleu", "chrf", "ter", "rougeL")} == {
        k: expected[k] for k in ("bleu", "chrf", "ter", "rougeL")
    }
    assert metrics.also["beam2"].beam_size == 2 and metrics.also["greedy"].beam_size == 1
    assert EvalReport.read(tmp_path / "eval.json") == metrics  # the file reads back as written
    assert list(json.loads((tmp_path / "eval.json").read_text())["also"]["greedy"]) == [
        "bleu",
        "chrf",
        "ter",
        "rouge1",
        "rouge2",
        "rougeL",
        "exact_match",
        "beam_size",
        "decode_seconds",
        "sentences_per_second",
    ]


def test_also_accepts_greedy_and_beam_sizes_only() -> None:
    assert parse_params({"evaluate": {"also": ["greedy", "beam5"]}}).evaluate.also == ("greedy", "beam5")
    for bad in ("beam1", "beam", "sampling"):
        with pytest.raises(ConfigError, match=r"evaluate.also.0: String should match pattern"):
            parse_params({"evaluate": {"also": [bad]}})


def test_length_buckets_score_each_source_length_on_its_own() -> None:
    sources = ["a " * 5, "b " * 15, "c " * 25, "d " * 8]
    references = ["ein großer Hund läuft über die Wiese", "zwei kleine Katzen schlafen auf dem Sofa",
                  "ein Mann fährt mit dem Rad nach Hause", "die Sonne scheint heute den ganzen Tag"]  # fmt: skip
    hypotheses = [references[0], references[1], "nichts", references[3]]
    buckets = evaluate.length_buckets(sources, hypotheses, references)
    assert list(buckets) == ["1-10", "11-20", ">20"]  # shortest first
    assert [b["sentences"] for b in buckets.values()] == [2, 1, 1]
    assert buckets["1-10"]["bleu"] == buckets["11-20"]["bleu"] == 100.0 and buckets[">20"]["bleu"] == 0.0


def test_several_references_are_scored_under_each_convention_and_written_out(tmp_path: Path) -> None:
    pairs = generate_pairs(300, 4)
    tokenizer.train(TokenizerConfig(vocab_size=150), [s for s, _ in pairs], [t for _, t in pairs], tmp_path / "tok")
    tok = Tokenizers.load(tmp_path / "tok")
    torch.manual_seed(0)
    model = build_model(ModelConfig(rnn=RNNConfig(emb_dim=16, hidden=16)), tok.src.get_piece_size(), tok.src.get_piece_size())
    translator = Translator(model, tok, torch.device("cpu"))
    # Each item: its target, and as further references the target's first half and its last word.
    test = [layout.Example(s, t, (" ".join(t.split()[:3]), t.split()[-1]), f"e{i}") for i, (s, t) in enumerate(pairs[:30])]
    layout.write_prepared({"train": pairs[:10], "valid": pairs[:10], "test": test}, tmp_path / "prepared")
    cfg = EvaluateConfig(max_len_b=5, attention_maps=0, rouge_multi="mean")

    report = evaluate.run(cfg, translator, tmp_path / "prepared", tmp_path / "eval.json", tmp_path / "hyps.tsv")

    hyps = translator.translate([e.src for e in test], cfg)
    given = score(hyps, [list(e.refs) for e in test], multi="mean")
    assert (report.rougeL, report.bleu, report.references) == (given["rougeL"], given["bleu"], 2)  # the references, mean
    assert report.rouge_signature == given["rouge_signature"] and "multi:mean" in report.rouge_signature
    assert set(report.reference_sets) == {"target", "references/best", "references/mean"}
    assert report.reference_sets["target"]["rougeL"] == score(hyps, [e.tgt for e in test])["rougeL"]
    assert report.reference_sets["references/best"]["rouge1"] == score(hyps, [list(e.refs) for e in test])["rouge1"]
    assert report.copy_source_rougeL == score([e.src for e in test], [list(e.refs) for e in test], multi="mean")["rougeL"]
    rows = (tmp_path / "hyps.tsv").read_text().splitlines()
    assert rows[0] == "id\tsource\treference\tref0\tref1\thypothesis"
    assert rows[1].split("\t") == ["e0", test[0].src, test[0].tgt, *test[0].refs, hyps[0]]
    # Scored against the target alone, the references are only reported beside it.
    target = evaluate.run(cfg.model_copy(update={"references": "target"}), translator, tmp_path / "prepared",
                          tmp_path / "eval2.json", tmp_path / "hyps2.tsv")  # fmt: skip
    assert (target.rougeL, target.references) == (report.reference_sets["target"]["rougeL"], 1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_evaluation_says_it_stopped_evaluating_and_writes_nothing(tmp_path: Path, signum: int) -> None:
    ws = tmp_path / "ws"
    run_inputs(ws, "stopped")  # a tokenizer and an (untrained) model at the layout's paths
    (ws / layout.EVAL_METRICS).unlink()
    (ws / layout.HYPOTHESES).unlink()
    pairs = generate_pairs(20000, 5)  # minutes of beam search for that model: the stop comes long before the end
    layout.write_prepared({"train": pairs[:10], "valid": pairs[:10], "test": pairs}, ws / layout.PREPARED_DIR)
    proc = subprocess.Popen([sys.executable, "-m", layout.stage("evaluate").module], cwd=ws, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    watchdog = threading.Timer(120, proc.kill)  # reading its output waits on the stage: never for more than this
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # until decoding has begun
            lines.append(line)
            if "decoding the test set" in line:
                break
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 128 + signum, "".join(lines) + out
    (status,) = stage_status.read_all(ws)
    assert (status.stage, status.outcome, status.message) == ("evaluate", "stopped", STOPPED)
    assert "stopped while evaluating the test set" in out and "Traceback" not in out
    assert not (ws / layout.EVAL_METRICS).exists() and not (ws / layout.HYPOTHESES).exists()
