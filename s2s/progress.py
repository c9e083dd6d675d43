"""Progress of a long decode in the log: items done, rate and time left, at most every `every` seconds."""

from __future__ import annotations

import logging
import time


class Progress:
    """Call with the number of items just finished; logs `what: done/total, rate/s, ETA` now and then, and at the end."""

    def __init__(self, what: str, total: int, logger: logging.Logger, every: float = 15.0) -> None:
        self.what, self.total, self.log, self.every = what, total, logger, every
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start
        self.log.info("%s: %d items", what, total)  # the size of the job at once, the rate and time left later

    def __call__(self, finished: int) -> None:
        self.done += finished
        now = time.perf_counter()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        self.log.info("%s: %d/%d (%d%%), %.1f/s, %s left", self.what, self.done, self.total,
                      100 * self.done // max(self.total, 1), rate, _duration(left))  # fmt: skip


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
