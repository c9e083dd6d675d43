"""s2s/stage_status.py: a stage that stops or fails says so in a record, which the flow reads instead of its log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from support import REPO, TINY_PARAMS

from s2s import layout, stage_status
from s2s.stage_status import StageStatus


def test_records_round_trip_oldest_first_and_clear(tmp_path: Path) -> None:
    first = StageStatus("ingest", "failed", "ingest stage failed: data/raw/x.en: input file not found", resumes=False)
    second = StageStatus("train", "stopped", "stopped at epoch 2, step 40; run again to resume", resumes=True)
    first.write(tmp_path)
    os.utime(stage_status.status_path(tmp_path, "ingest"), (1, 1))  # older than the next one, whatever the clock
    second.write(tmp_path)
    assert stage_status.read_all(tmp_path) == [first, second]
    assert stage_status.status_path(tmp_path, "train") == tmp_path / layout.STATUS_DIR / "train.json"
    stage_status.clear(tmp_path)
    assert stage_status.read_all(tmp_path) == []
    assert stage_status.read_all(tmp_path / "nowhere") == []


def test_a_failing_stage_writes_its_own_message(tmp_path: Path) -> None:
    params = {**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "epochz": 3}}  # a misspelt key
    (tmp_path / layout.PARAMS_FILE).write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", layout.stage("ingest").module], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    [record] = stage_status.read_all(tmp_path)
    assert (record.stage, record.outcome, record.resumes) == ("ingest", "failed", False)
    assert record.message.startswith("ingest stage failed: params.yaml: invalid configuration\n  train.epochz:")
    assert done.stdout.rstrip().endswith(record.message) and done.stdout.count("epochz") == 1  # its log says the same
