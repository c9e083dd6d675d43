"""How a stage that did not finish ended, as data: the record a stage writes and the flow reads.

A stage stopped on a signal, or failed on an expected error, writes `StageStatus` to
`<workspace>/layout.STATUS_DIR/<stage>.json` before it logs the same message and exits; a stage that succeeds
leaves none. The flow clears the folder before it runs a command and reads it afterwards, so it never has to
recognise a stage's log lines.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from s2s.layout import STATUS_DIR

Outcome = Literal["stopped", "failed"]


@dataclass(frozen=True)
class StageStatus:
    stage: str
    outcome: Outcome
    message: str  # the stage's own words: the file, line or key at fault, or where it stopped
    resumes: bool  # a rerun continues from where this one stopped (a saved resume state)

    def write(self, workspace: Path) -> None:
        """Atomically (the ranks of a distributed stage may all write it)."""
        path = status_path(workspace, self.stage)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(asdict(self)) + "\n")
        os.replace(tmp, path)


def status_path(workspace: Path, stage: str) -> Path:
    return workspace / STATUS_DIR / f"{stage}.json"


def read_all(workspace: Path) -> list[StageStatus]:
    """The records of the stages that did not finish since the folder was last cleared, oldest first."""
    folder = workspace / STATUS_DIR
    paths = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    return [StageStatus(**json.loads(p.read_text())) for p in paths]


def clear(workspace: Path) -> None:
    for path in (workspace / STATUS_DIR).glob("*.json"):
        path.unlink(missing_ok=True)
