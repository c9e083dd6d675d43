"""The time budget (`train.max_minutes`): the clock training time is counted on, across resumes and processes.

On many processes every rank goes by rank 0's clock, agreed at each update's all-reduce, so that every rank's
budget and learning-rate schedule agree on how far the run is.
"""

from __future__ import annotations

import time

from s2s import distributed

PROBE_UPDATES = 10  # updates timed before the budget is checked against warm-up and the first epoch


def budget_warnings(
    max_minutes: float, elapsed: float, seconds_per_update: float, updates: int, warmup_steps: int, steps_per_epoch: int
) -> list[str]:
    """What a time budget cannot reach at the measured speed: the end of warm-up, the end of the first epoch."""
    if not max_minutes or seconds_per_update <= 0:
        return []
    reachable = updates + int((60 * max_minutes - elapsed) / seconds_per_update)
    speed = f"train.max_minutes={max_minutes:g} allows about {reachable} updates at the measured {seconds_per_update:.2f} s each"
    out = []
    if reachable < warmup_steps:
        out.append(f"{speed}, fewer than train.warmup_steps={warmup_steps}: the learning rate never reaches its peak "
                   "(lower warmup_steps or raise max_minutes)")  # fmt: skip
    if reachable < steps_per_epoch:
        out.append(f"{speed}, fewer than one epoch ({steps_per_epoch} updates): the model is validated only when the "
                   "budget runs out, on part of the data (raise max_minutes or lower batch_tokens)")  # fmt: skip
    return out


class Budget:
    """Seconds of training so far (the time before a resume included) against `max_minutes` (0: no budget)."""

    def __init__(self, max_minutes: float, world: distributed.World) -> None:
        self.max_minutes = max_minutes
        self.seconds = 60.0 * max_minutes  # the one conversion from the config's minutes
        self.world = world
        self.clock = time.perf_counter()  # training started at this perf_counter() reading (moved back on resume)
        self.shared = 0.0  # rank 0's elapsed() at the last update: what every rank goes by
        self.probe: list[float] = []  # agreed seconds after each of this process's first updates

    def start(self, seconds_before: float) -> None:
        """Start counting, `seconds_before` already spent (by the run this one resumes)."""
        self.clock = time.perf_counter() - seconds_before
        self.shared = seconds_before

    def elapsed(self) -> float:
        """This process's clock."""
        return time.perf_counter() - self.clock

    def agreed(self) -> float:
        """Seconds every rank agrees on: this clock on one process, rank 0's at the last update on many."""
        return self.shared if self.world.enabled else self.elapsed()

    def fraction(self) -> float:
        """How much of the budget is spent (0 without one)."""
        return self.agreed() / self.seconds if self.seconds else 0.0

    def out_of_time(self, elapsed: float) -> bool:
        return bool(self.seconds) and elapsed > self.seconds

    def probe_update(self, updates: int, warmup_steps: int, steps_per_epoch: int) -> list[str]:
        """Called after each update; once, after the first PROBE_UPDATES, what the budget cannot reach (rank 0)."""
        self.probe.append(self.agreed())
        if len(self.probe) != PROBE_UPDATES + 1 or not self.world.is_main:
            return []
        per_update = (self.probe[-1] - self.probe[0]) / PROBE_UPDATES
        return budget_warnings(self.max_minutes, self.probe[-1], per_update, updates, warmup_steps, steps_per_epoch)
