"""Throw-away pipeline workspaces: a git + DVC repository holding the stages, the code and a params file.

Used by the tests and the benchmarks to run the real pipeline away from the
checkout (its data, models and registry stay untouched).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from s2s import dvc
from s2s.config import DEFAULT_TRACKING_URI, RegistryConfig, parse_params
from s2s.dotted import deep_merge
from s2s.errors import S2SError
from s2s.layout import DVC_FILE, PARAMS_FILE, RAW_DIR

REPO = Path(__file__).resolve().parent.parent


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """A command in this environment (s2s.dvc.env), checked: a failure raises with its output."""
    return dvc.run(args, cwd, check=True)


def write_params(root: Path, params: dict[str, Any]) -> None:
    """Validated and complete, as a user's params.yaml is: DVC needs every key a stage lists."""
    (root / PARAMS_FILE).write_text(yaml.safe_dump(parse_params(params).model_dump(mode="json"), sort_keys=False))


GIT = ["git", "-c", "user.name=s2s", "-c", "user.email=s2s@example.invalid"]


def make_workspace(
    root: Path, params: dict[str, Any], local_registry: bool = True, source: Path = REPO, cache_dir: Path | None = None
) -> Path:
    """A git + DVC repository like a checkout of this one: dvc.yaml, s2s/, flows/, prefect.yaml, data/raw/, the DVC config.

    Its default DVC remote is therefore `../s2s-dvc-remote` beside it, as for a real checkout. `source` is the
    checkout whose stages and code it copies; `cache_dir` a DVC cache to share (else its own).
    """
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / DVC_FILE, root / DVC_FILE)
    for package in ("s2s", "flows", "ops"):
        shutil.copytree(source / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    (root / RAW_DIR).mkdir(parents=True)
    shutil.copy(REPO / RAW_DIR / ".gitignore", root / RAW_DIR / ".gitignore")
    # The registry stays inside the workspace whatever `params` or the environment say, unless asked otherwise.
    local = {"tracking_uri": DEFAULT_TRACKING_URI, "artifact_root": RegistryConfig().artifact_root}
    write_params(root, deep_merge(params, {"registry": local}) if local_registry else params)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.cache/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(dvc.command("init", "-q"), root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    if cache_dir is not None:
        run(dvc.command("config", "cache.dir", str(cache_dir)), root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-q", "-m", "workspace"], root)
    return root


class WorkspaceBusy(S2SError, RuntimeError):
    """Another pipeline run holds the workspace."""


@contextlib.contextmanager
def workspace_lock(root: Path) -> Iterator[None]:
    """One pipeline run per workspace: a second one fails at once, naming the run that holds it.

    DVC locks its repository only while one command runs; between stages a
    second run could slip in and interleave, so the whole flow holds this lock.
    """
    path = root / ".dvc" / "tmp" / "s2s-pipeline.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown process"
            raise WorkspaceBusy(f"another s2s pipeline run is using {root} ({owner}); wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
