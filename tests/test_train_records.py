"""s2s/train_records.py: the training curve and summary, written and read by their one owner."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from records import TRAIN_SUMMARY

from s2s.train_records import COLUMNS, MLFLOW_PREFIX, EpochResult, TrainSummary, read_curve, write_curve

EPOCHS = [EpochResult(1, 4.5, 3.2, 24.5, 10.25, 10.25, 3000.0, 290.5), EpochResult(2, 3.1, 2.5, 12.2, 28.0, 28.0, 3100.0, 280.0)]


def test_the_curve_round_trips_with_its_columns(tmp_path: Path) -> None:
    write_curve(tmp_path / "curve.csv", EPOCHS)
    assert (tmp_path / "curve.csv").read_text().splitlines()[0] == ",".join(COLUMNS)
    assert read_curve(tmp_path / "curve.csv") == EPOCHS
    assert read_curve(tmp_path / "none.csv") == []
    metrics = EPOCHS[0].mlflow_metrics()
    assert metrics[f"{MLFLOW_PREFIX}valid_bleu"] == 10.25 and f"{MLFLOW_PREFIX}epoch" not in metrics and len(metrics) == 7


def test_the_summary_round_trips_and_reads_a_summary_from_before_the_kept_epoch(tmp_path: Path) -> None:
    TRAIN_SUMMARY.write(tmp_path / "train.json")
    assert TrainSummary.read(tmp_path / "train.json") == TRAIN_SUMMARY
    old = {k: v for k, v in asdict(TRAIN_SUMMARY).items() if k not in ("kept", "kept_epoch", "average_valid_score")}
    (tmp_path / "old.json").write_text(json.dumps({**old, "best_epoch": 3}))  # a registered version's, from before
    read = TrainSummary.read(tmp_path / "old.json")
    assert (read.kept, read.kept_epoch, read.average_valid_score) == ("epoch 3", 3, None)
    (tmp_path / "avg.json").write_text(json.dumps({**old, "best_epoch": 3, "kept": "average of epochs 2-4"}))
    assert TrainSummary.read(tmp_path / "avg.json").kept_epoch is None  # the average was kept: no epoch named
