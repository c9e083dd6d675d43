"""Where a training run stands: what a resume state saves, so that a killed run continues exactly.

`TrainState` is the progress through the epochs, the validation history and the weights kept so far;
`rng_state`/`set_rng_state` are a process's random streams. The file they go in, and the key it is found
under, belong to s2s.checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from s2s.selection import Kept
from s2s.train_records import EpochResult


@dataclass
class TrainState:
    epoch: int = 1  # the epoch in progress
    step: int = 0  # batches of that epoch already trained
    tokens: int = 0  # source + target tokens of that epoch
    loss_sum: float = 0.0
    loss_tokens: int = 0
    epoch_seconds: float = 0.0  # of that epoch, before the last resume state was saved
    seconds: float = 0.0  # training wall time before the last resume state was saved
    updates: int = 0  # optimizer steps of the whole run
    history: list[EpochResult] = field(default_factory=list)
    kept: Kept | None = None  # None before the first validation

    def next_epoch(self) -> None:
        """The epoch just validated is done: the counters of the next one start at zero."""
        self.epoch, self.step, self.epoch_seconds = self.epoch + 1, 0, 0.0
        self.tokens, self.loss_sum, self.loss_tokens = 0, 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)  # plain lists, dicts and numbers: loadable with torch.load(weights_only=True)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = dict(state)
        values["history"] = [EpochResult(**h) for h in values["history"]]
        kept = values.get("kept")
        values["kept"] = Kept(**{**kept, "averaged": tuple(kept["averaged"])}) if kept else None
        best, bleu = values.pop("best_score", None), values.pop("best_bleu", None)  # saved before Kept was
        if values["kept"] is None and best is not None:  # the latest epoch of that score: a tie kept the later one
            epoch = max(r.epoch for r in values["history"] if r.valid_score == best)
            values["kept"] = Kept(best, bleu if bleu is not None else best, epoch=epoch)
        for name, value in values.items():
            setattr(self, name, value)


def rng_state() -> dict[str, Any]:
    """This process's random streams: PyTorch's (CPU and CUDA) and Python's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
    }


def set_rng_state(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate((3, tuple(rng["python"]), None))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
