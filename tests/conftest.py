"""Shared fixtures: tiny configs and throw-away pipeline workspaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from s2s.config import parse_params

REPO = Path(__file__).resolve().parent.parent
MULTI30K = REPO.parent / "shared" / "data" / "multi30k"

# A config small enough to run the whole pipeline in seconds, still big enough to learn something.
TINY_PARAMS: dict[str, Any] = {
    "ingest": {"builtin": {"pairs": 1500, "seed": 3}, "holdout": {"valid": 100, "test": 100}},
    "tokenizer": {"model_type": "bpe", "vocab_size": 300},
    "model": {"arch": "rnn", "rnn": {"emb_dim": 32, "hidden": 48, "dropout": 0.0}},
    "train": {"epochs": 2, "batch_tokens": 1500, "lr": 0.005, "valid_bleu_sentences": 50, "threads": 1},
    "evaluate": {"batch_size": 64},
}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def run(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True, **kwargs)


def make_workspace(root: Path, params: dict[str, Any]) -> Path:
    """A fresh git + DVC repository holding the project's stages, code and the given params."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "s2s", root / "s2s", ignore=shutil.ignore_patterns("__pycache__"))
    full = deep_merge(
        params,
        {
            "registry": {"tracking_uri": "sqlite:///mlflow.db", "artifact_root": "mlartifacts"},
            "remote": {"url": str(root.parent / f"{root.name}-remote")},
        },
    )
    # Complete, as a user's params.yaml is: DVC needs every key a stage lists to be present.
    (root / "params.yaml").write_text(yaml.safe_dump(parse_params(full).model_dump(mode="json"), sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.cache/\n__pycache__/\n")
    git = ["git", "-c", "user.name=s2s-test", "-c", "user.email=test@example.invalid"]
    run(["git", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    run([*git, "add", "-A"], root)
    run([*git, "commit", "-q", "-m", "workspace"], root)
    return root


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's real (ephemeral, SQLite) API in a temporary home, for every flow test."""
    home = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def multi30k_or_skip() -> Path:
    if not (MULTI30K / "train.en.gz").is_file():
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    return MULTI30K
