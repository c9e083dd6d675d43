"""s2s/dvc.py: how s2s runs DVC and its stages, and learns how a stage ended from its record, not its log."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import REPO

from s2s import dvc, stage_status
from s2s.dvc import STOP_NOTICE, DVCLockHeld, StageFailed, Stop


@pytest.fixture
def no_stop() -> Iterator[None]:
    """Stop is process-wide state: each test starts and ends without a stop asked."""
    Stop.signum, Stop.notice, Stop.running = 0, "", ""
    yield
    Stop.signum, Stop.notice, Stop.running = 0, "", ""


def stage_like(outcome: str, message: str, code: int) -> list[str]:
    """A command that does what a stage does when it does not finish: its record, the same words logged, an exit code."""
    script = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
              f"from s2s.stage_status import StageStatus; "
              f"StageStatus('train', {outcome!r}, {message!r}, resumes={outcome == 'stopped'}).write(Path.cwd()); "
              f"print('12:00:00 WARNING s2s.stages.train: ' + {message!r}); print('other output'); sys.exit({code})")  # fmt: skip
    return [sys.executable, "-c", script]


def test_commands_run_this_environments_dvc_without_telemetry() -> None:
    assert dvc.command("status", "--json") == [sys.executable, "-m", "dvc", "status", "--json"]
    env = dvc.env({"PATH": "/usr/bin"}, EXTRA="1")
    assert env["PATH"] == f"{Path(sys.executable).parent}:/usr/bin" and env["EXTRA"] == "1"
    assert (env["DVC_NO_ANALYTICS"], env["MLFLOW_DISABLE_TELEMETRY"], env["PYTHONUNBUFFERED"]) == ("1", "true", "1")


def test_a_failed_stage_is_told_by_its_record_whatever_it_printed(tmp_path: Path, no_stop: None) -> None:
    message = "ingest stage failed: data/raw/x.en: input file not found"
    with pytest.raises(StageFailed) as err:
        dvc.run_logged(stage_like("failed", message, 1), tmp_path, "ingest")
    assert str(err.value) == message
    with pytest.raises(StageFailed, match=r"^ingest failed with exit code 3:\nno record"):  # no record: the output's end
        dvc.run_logged([sys.executable, "-c", "print('no record'); raise SystemExit(3)"], tmp_path, "ingest")


def test_a_stop_is_noticed_from_the_record_and_its_line_is_marked(
    tmp_path: Path, no_stop: None, caplog: pytest.LogCaptureFixture
) -> None:
    message = "stopped at epoch 2, step 40; run again to resume"
    logger = logging.getLogger("test-dvc")
    with caplog.at_level(logging.INFO, logger="test-dvc"), pytest.raises(StageFailed, match="stopped at epoch 2"):
        dvc.run_logged(stage_like("stopped", message, 143), tmp_path, "train", logger)
    assert Stop.notice == message
    marked = {r.getMessage(): getattr(r, STOP_NOTICE) for r in caplog.records if hasattr(r, STOP_NOTICE)}
    assert marked == {f"train | 12:00:00 WARNING s2s.stages.train: {message}": True, "train | other output": False}
    stage_status.clear(tmp_path)
    dvc.run_logged([sys.executable, "-c", "print('fine')"], tmp_path, "train")  # a record from before is not read again
    assert stage_status.read_all(tmp_path) == []


def test_dvcs_lock_is_waited_for_then_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dvc, "DVC_LOCK_WAITS", (0, 0))
    calls: list[int] = []

    def locked() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise StageFailed("ERROR: Unable to acquire lock")
        return "ran"

    assert dvc.waiting_for_dvc_lock(tmp_path, locked) == "ran" and len(calls) == 3
    with pytest.raises(DVCLockHeld, match=r"DVC's lock .*tried 3 times over 0 s\. Nothing ran and nothing was lost"):
        dvc.waiting_for_dvc_lock(tmp_path, lambda: (_ for _ in ()).throw(StageFailed("Unable to acquire lock")))
