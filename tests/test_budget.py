"""s2s/budget.py: the time budget, its clock across resumes, and what a budget too short cannot reach."""

from __future__ import annotations

import pytest

from s2s import distributed
from s2s.budget import PROBE_UPDATES, Budget, budget_warnings


def test_budget_warnings_name_what_the_budget_cannot_reach() -> None:
    # 1 minute, 10 updates done in 5 s (0.5 s each): about 10 + 110 = 120 updates in all.
    short = budget_warnings(1.0, 5.0, 0.5, 10, 150, 240)
    assert short == [
        "train.max_minutes=1 allows about 120 updates at the measured 0.50 s each, fewer than train.warmup_steps=150: "
        "the learning rate never reaches its peak (lower warmup_steps or raise max_minutes)",
        "train.max_minutes=1 allows about 120 updates at the measured 0.50 s each, fewer than one epoch (240 updates): "
        "the model is validated only when the budget runs out, on part of the data (raise max_minutes or lower batch_tokens)",
    ]
    assert budget_warnings(1.0, 5.0, 0.5, 10, 100, 100) == []  # reaches both
    assert budget_warnings(0.0, 5.0, 0.5, 10, 150, 240) == []  # no budget, nothing to warn of


def test_the_clock_counts_time_before_a_resume_and_one_minute_is_sixty_seconds() -> None:
    budget = Budget(2.0, distributed.World())
    assert budget.seconds == 120.0
    budget.start(90.0)  # resumed after 90 s of training
    assert 90.0 <= budget.elapsed() < 95.0 and budget.agreed() == pytest.approx(budget.elapsed(), abs=1.0)
    assert 0.75 <= budget.fraction() < 0.8
    assert not budget.out_of_time(119.0) and budget.out_of_time(121.0)
    assert Budget(0.0, distributed.World()).fraction() == 0.0 and not Budget(0.0, distributed.World()).out_of_time(1e9)


def test_on_many_processes_every_rank_goes_by_the_agreed_clock() -> None:
    budget = Budget(1.0, distributed.World(rank=1, world_size=2))
    budget.start(0.0)
    budget.shared = 45.0  # rank 0's clock, from the last update's all-reduce
    assert budget.agreed() == 45.0 and budget.fraction() == 0.75


def test_the_probe_warns_once_after_its_updates(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = Budget(1.0, distributed.World())
    clock = iter(range(100))  # one second per update
    monkeypatch.setattr(budget, "agreed", lambda: float(next(clock)))
    warnings = [budget.probe_update(updates, warmup_steps=100, steps_per_epoch=50) for updates in range(1, 20)]
    assert [i for i, w in enumerate(warnings) if w] == [PROBE_UPDATES]  # the 11th call: 10 updates timed, once
    # 11 updates done after 10 s at 1 s each: about 11 + 50 = 61 of the 100 warm-up updates fit in the minute.
    assert warnings[PROBE_UPDATES] == budget_warnings(1.0, 10.0, 1.0, 11, 100, 50)
    assert len(warnings[PROBE_UPDATES]) == 1 and "fewer than train.warmup_steps=100" in warnings[PROBE_UPDATES][0]
