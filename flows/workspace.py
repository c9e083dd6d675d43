"""Throw-away pipeline workspaces: a git + DVC repository holding the stages, the code and a params file.

Used by the tests and the benchmarks to run the real pipeline away from the
checkout (its data, models and registry stay untouched).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from s2s.config import DEFAULT_TRACKING_URI, RegistryConfig, parse_params
from s2s.layout import DVC_FILE, PARAMS_FILE, RAW_DIR

REPO = Path(__file__).resolve().parent.parent


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True)


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
    for package in ("s2s", "flows"):
        shutil.copytree(source / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "prefect.yaml", root / "prefect.yaml")
    (root / RAW_DIR).mkdir(parents=True)
    shutil.copy(REPO / RAW_DIR / ".gitignore", root / RAW_DIR / ".gitignore")
    # The registry stays inside the workspace whatever `params` or the environment say, unless asked otherwise.
    local = {"tracking_uri": DEFAULT_TRACKING_URI, "artifact_root": RegistryConfig().artifact_root}
    write_params(root, deep_merge(params, {"registry": local}) if local_registry else params)
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.cache/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    if cache_dir is not None:
        run([sys.executable, "-m", "dvc", "config", "cache.dir", str(cache_dir)], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-q", "-m", "workspace"], root)
    return root
