"""Progress lines of a long decode (s2s/progress.py): the size at once, then done/total, rate and time left."""

from __future__ import annotations

import logging

import pytest

from s2s import progress
from s2s.progress import Progress


def test_progress_logs_the_size_then_rate_and_time_left_at_most_every_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([100.0, 105.0, 116.0, 200.0, 230.0])  # start, then one reading per call
    monkeypatch.setattr(progress.time, "perf_counter", lambda: next(clock))
    logger = logging.getLogger("test.progress")
    with caplog.at_level(logging.INFO, logger="test.progress"):
        track = Progress("decoding the test set (beam5)", 1906, logger, every=15.0)
        track(100)  # 5 s in: too soon for a line
        track(100)  # 16 s in: 200 done at 12.5/s
        track(1000)  # 100 s in
        track(706)  # all done: always said
    assert caplog.messages == [
        "decoding the test set (beam5): 1906 items",
        "decoding the test set (beam5): 200/1906 (10%), 12.5/s, 2m16s left",
        "decoding the test set (beam5): 1200/1906 (62%), 12.0/s, 59s left",
        "decoding the test set (beam5): 1906/1906 (100%), 14.7/s, 0s left",
    ]
