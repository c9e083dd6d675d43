"""The lines a finished run ends with (s2s/summary.py), from the stages' metrics files."""

from __future__ import annotations

from dataclasses import replace

from records import decoding_scores, eval_report

from s2s import summary
from s2s.train_records import TrainSummary

TRAINING = TrainSummary(
    epochs=6, select_metric="bleu", best_valid_score=35.08, best_valid_bleu=35.08, kept="epoch 6", kept_epoch=6,
    average_valid_score=35.03, updates=1436, resumed_at_update=0, train_pairs=27000, train_pairs_too_long=12,
    parameters=7_190_000, train_seconds=1321.4, tokens_per_second=4041.2, processes=1, tokens_per_second_per_process=4041.2,
    device="cpu", peak_memory_mb=2000.0,
)  # fmt: skip


def test_training_line_says_which_weights_were_kept() -> None:
    assert summary.training_line(TRAINING) == (
        "6 epochs, 1,436 updates in 22 min 1 s, 4,041 tokens/s; kept: epoch 6 (valid bleu 35.08), "
        "not the average of the last epochs (35.03)"
    )
    # The average kept: the line names no epoch whose weights the model does not hold.
    averaged = replace(TRAINING, kept="average of epochs 4-6", kept_epoch=None, best_valid_score=35.2,
                       average_valid_score=35.2, resumed_at_update=700)  # fmt: skip
    assert summary.training_line(averaged) == (
        "6 epochs, 1,436 updates (resumed at update 700) in 22 min 1 s, 4,041 tokens/s; "
        "kept: average of epochs 4-6 (valid bleu 35.20)"
    )
    assert summary.training_line(replace(TRAINING, average_valid_score=None)).endswith("kept: epoch 6 (valid bleu 35.08)")


def test_data_line_counts_every_pair_left_out_of_training() -> None:
    ingest = {
        "train": {
            "read": 30000,
            "kept": 27012,
            "dropped": {"duplicate": 920, "leak": 68},
            "moved": {"valid": 1000, "test": 1000},
        },
        "valid": {"read": 0, "kept": 1000},
        "test": {"read": 0, "kept": 1000},
    }
    assert summary.data_line(ingest, TRAINING) == (
        "train 27,012 of 30,000 pairs read (1,000 valid, 1,000 test held out); left out: 920 duplicate, 68 leak, "
        "12 longer than train.max_tokens; valid 1,000; test 1,000"
    )
    clean = {"train": {"read": 500, "kept": 500, "dropped": {}}}
    assert summary.data_line(clean) == "train 500 of 500 pairs read; left out: none"


def test_test_lines_give_the_served_decoding_then_each_other_one() -> None:
    greedy = decoding_scores(bleu=33.4, chrf=58.9, ter=52.0, beam_size=1)
    metrics = eval_report(decoding="beam5", bleu=36.5, chrf=60.25, ter=50.1, copy_source_bleu=0.48, also={"greedy": greedy})
    assert summary.test_lines(metrics) == [
        ("test", "BLEU 36.5  chrF 60.25  TER 50.1  (beam5; copying the source: BLEU 0.48)"),
        ("test greedy", "BLEU 33.4  chrF 58.9  TER 52.0"),
    ]
    assert summary.duration(3725) == "1 h 2 min" and summary.duration(59.6) == "1 min 0 s" and summary.duration(7) == "7 s"
