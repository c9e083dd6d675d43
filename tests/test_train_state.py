"""s2s/train_state.py: what a resume state saves round-trips through torch.save(weights_only)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from s2s.checkpoint import atomic_torch_save, read_resume
from s2s.selection import Kept
from s2s.train_records import EpochResult
from s2s.train_state import TrainState, rng_state, set_rng_state


def test_train_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    state = TrainState(epoch=3, step=7, tokens=900, loss_sum=12.5, loss_tokens=400, epoch_seconds=20.0, seconds=300.0,
                       updates=57, history=[EpochResult(1, 4.0, 3.0, 20.1, 9.5, 9.5, 100.0, 10.0)],
                       kept=Kept(9.5, 9.5, averaged=(1, 2)))  # fmt: skip
    path = tmp_path / "resume.pt"
    atomic_torch_save({"model": {}, "optimizer": {}, "scheduler": {}, "rng": [], "progress": state.state_dict()}, path)
    loaded = read_resume(path)
    assert loaded is not None
    again = TrainState()
    again.load_state_dict(loaded["progress"])
    assert again == state
    again.next_epoch()
    assert (again.epoch, again.step, again.tokens, again.loss_sum, again.updates) == (4, 0, 0, 0.0, 57)


def test_a_torn_resume_state_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "torn.pt").write_bytes(b"not a zip")
    assert read_resume(tmp_path / "torn.pt") is None and read_resume(tmp_path / "missing.pt") is None


def test_rng_state_restores_both_streams() -> None:
    saved = rng_state()
    first = (torch.rand(3), random.random())
    set_rng_state(saved)
    again = (torch.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and first[1] == again[1]


def test_a_resume_state_saved_before_kept_was_recorded_names_the_kept_epoch() -> None:
    history = [EpochResult(e, 4.0, 3.0, 20.1, score, score, 100.0, 10.0) for e, score in ((1, 9.5), (2, 12.0), (3, 11.0))]
    old = {**TrainState(epoch=4, history=history).state_dict(), "best_score": 12.0, "best_bleu": 12.0}
    del old["kept"]
    state = TrainState()
    state.load_state_dict(old)
    assert state.kept == Kept(12.0, 12.0, epoch=2) and not hasattr(state, "best_score")
