"""Every orchestration entry point imports with the pinned set (a resolver can pick a set that breaks at import)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "module",
    [
        "prefect",
        "prefect.server.api.server",  # the Prefect server (API + UI)
        "prefect.cli",
        "prefect.deployments",
        "mlflow",
        "mlflow.pyfunc",
        "mlflow.server",  # `mlflow server` / `mlflow ui`
        "mlflow.pyfunc.scoring_server",  # `mlflow models serve`
        "ctranslate2",  # `s2s export` and the versions it registers
        "ctranslate2.converters",
        "dvc.cli",
        "dvc.api",
        "sentencepiece",
        "sacrebleu",
        "optuna",  # `s2s sweep`: the study, its RDB storage, TPE, Hyperband
        "optuna.visualization.matplotlib",  # the sweep report's plots
        "flows.pipeline",
        "flows.sweep",  # the s2s-sweep-trial deployment's entry point
        "flows.cli",
    ],
)
def test_entry_point_imports(module: str) -> None:
    importlib.import_module(module)


def test_prefect_server_app_builds() -> None:
    from prefect.server.api.server import create_app

    assert create_app(ephemeral=True) is not None


def test_library_never_imports_prefect_and_only_registry_imports_mlflow() -> None:
    for path in sorted((REPO / "s2s").rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        rel = path.relative_to(REPO)
        assert "prefect" not in names, f"{rel} imports prefect"
        if rel.as_posix() != "s2s/registry.py":
            assert "mlflow" not in names, f"{rel} imports mlflow"
