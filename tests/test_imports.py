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


def test_prefect_server_app_answers(tmp_path: Path) -> None:
    """The API app builds and answers, on a database of its own (Prefect reads settings once: they are set here)."""
    from fastapi.testclient import TestClient
    from prefect.server.api.server import create_app
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL, PREFECT_HOME, temporary_settings

    database = f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"
    settings = {PREFECT_HOME: str(tmp_path), PREFECT_API_DATABASE_CONNECTION_URL: database}
    # Entered left to right: the app is created under the settings; its start-up creates the database.
    with temporary_settings(settings), TestClient(create_app(ephemeral=True)) as client:
        health = client.get("/api/health")
        flows = client.post("/api/flows/filter", json={})
    assert (health.status_code, health.json()) == (200, True)
    assert flows.status_code == 200 and flows.json() == []  # its own, new database: no flow yet
    assert (tmp_path / "prefect.db").is_file()


def imported(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, by its top-level package."""
    tree = ast.parse(path.read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}


# The library's modules that talk to MLflow: the registry and a sweep's runs.
MLFLOW_MODULES = {"s2s/registry.py", "s2s/sweep_runs.py"}


def test_flows_is_orchestration_and_the_library_knows_nothing_of_it() -> None:
    """flows/ holds exactly the modules that import Prefect; s2s/ and ops/ never import Prefect or flows."""
    for path in sorted((REPO / "flows").glob("*.py")):
        if path.name != "__init__.py":
            assert "prefect" in imported(path), f"{path.relative_to(REPO)} does not import prefect: it belongs in s2s/ or ops/"
    for package in ("s2s", "ops"):
        for path in sorted((REPO / package).rglob("*.py")):
            rel, names = path.relative_to(REPO).as_posix(), imported(path)
            assert not names & {"prefect", "flows"}, f"{rel} imports {sorted(names & {'prefect', 'flows'})}"
            assert package == "ops" or "ops" not in names, f"{rel} imports ops (the stack runs s2s, not the reverse)"
            if rel not in MLFLOW_MODULES and package == "s2s":
                assert "mlflow" not in names, f"{rel} imports mlflow"


def test_no_stage_imports_mlflow_or_optuna() -> None:
    """The DVC stages' code (their import graph, as dvc.yaml lists it) runs without the registry or the sweep."""
    from test_layout import dvc_yaml, expand

    for name, spec in dvc_yaml()["stages"].items():
        code, _ = expand(spec["deps"])
        for dep in sorted(code):
            assert not imported(REPO / dep) & {"mlflow", "optuna", "prefect"}, f"stage {name} runs {dep}, which imports them"
