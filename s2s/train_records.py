"""The files the train stage writes for others to read, each a frozen type with its reader and writer.

`metrics/train_curve.csv`, the training curve: one `EpochResult` per epoch, for `dvc plots`, MLflow and a sweep's
pruner; the one owner of its columns and of the MLflow prefix its metrics go under (`epoch/valid_bleu`).
`metrics/train.json`: the `TrainSummary`. Nothing heavy is imported here: the command line reads these too.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

MLFLOW_PREFIX = "epoch/"  # metric names in MLflow: epoch/train_loss, epoch/valid_score, ...


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    train_loss: float
    valid_loss: float
    valid_ppl: float
    valid_bleu: float
    valid_score: float  # train.select_metric on the validation sentences (= valid_bleu when that is bleu)
    tokens_per_second: float
    seconds: float

    def mlflow_metrics(self) -> dict[str, float]:
        """This epoch's values as MLflow metrics (logged at step `epoch`)."""
        return {f"{MLFLOW_PREFIX}{k}": float(v) for k, v in asdict(self).items() if k != "epoch"}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EpochResult))


def write_curve(path: Path, history: list[EpochResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(asdict(r) for r in history)


def read_curve(path: Path) -> list[EpochResult]:
    """The epochs written so far ([] before the first; a training run rewrites the whole file after each)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [_epoch(row) for row in rows]


def _epoch(row: dict[str, str]) -> EpochResult:
    values = [float(row[column]) for column in COLUMNS[1:]]
    return EpochResult(int(row["epoch"]), *values)


@dataclass(frozen=True)
class TrainSummary:
    """`metrics/train.json`: how training went and whose weights the model file holds."""

    epochs: int
    select_metric: str
    best_valid_score: float  # train.select_metric of the kept weights
    best_valid_bleu: float  # their validation BLEU
    kept: str  # whose weights artifacts/model holds: "epoch 3", "average of epochs 2-4"
    kept_epoch: int | None  # that epoch; None when the average is kept
    average_valid_score: float | None  # train.average_last's average, kept or not; None without one
    updates: int
    resumed_at_update: int  # 0: trained in one go
    train_pairs: int
    train_pairs_too_long: int
    parameters: int
    train_seconds: float
    tokens_per_second: float  # all processes together
    processes: int
    tokens_per_second_per_process: float
    device: str
    peak_memory_mb: float  # rank 0's
    startup_seconds: float | None = None  # rank 0's process start to the end of its first update (None: no update ran)
    precision: str = "float32"  # what the matmuls trained in (s2s.precision); the weights are float32 either way
    precision_reason: str = ""
    cpu_flags: list[str] = field(default_factory=list)  # the matmul-related flags of rank 0's CPU

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, path: Path) -> TrainSummary:
        values = json.loads(path.read_text())
        if "kept_epoch" not in values:  # written before the kept epoch was recorded: best_epoch, then always an epoch
            best = values.pop("best_epoch")
            values.setdefault("kept", f"epoch {best}")
            values["kept_epoch"] = None if values["kept"].startswith("average") else best
        values.setdefault("average_valid_score", None)
        return cls(**values)
