"""A sweep's bookkeeping outside Prefect: its study storage, the trials' MLflow runs, the epoch watcher that feeds
the pruner, and the report. `flows.sweep` sequences trials with these; s2s.sweep owns the study itself.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from s2s import layout, sweep
from s2s.config import Params, RegistryConfig, load_params
from s2s.registry import connect
from s2s.train_records import EpochResult, read_curve

SWEEPS_DIR = ".cache/sweeps"  # trial workspaces and reports, per study
DEFAULT_DB = "sweeps.db"  # the SQLite study database in the workspace, where nothing else is said
PARENT_RUN_ATTR = "s2s.mlflow_run"  # the sweep's MLflow run, a study user attribute
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def storage_url(workspace: Path, given: str | None = None) -> str:
    """The study's database: as given, else $S2S_SWEEP_STORAGE, else SQLite in the workspace."""
    return given or os.environ.get(layout.SWEEP_STORAGE_ENV) or f"sqlite:///{workspace / DEFAULT_DB}"


def base_params(workspace: Path) -> tuple[Params, dict[str, Any]]:
    """The workspace's params, validated, and as a plain tree with relative input paths made absolute.

    A trial workspace lives elsewhere; a path relative to the checkout (`../shared/...`) must still find the data.
    """
    params = load_params(workspace / layout.PARAMS_FILE)
    raw = params.model_dump(mode="json")
    files = raw["ingest"].get("files") or {}
    for split in files.values():
        for side, location in (split or {}).items():
            if location and not str(location["path"]).startswith(("http://", "https://", "/")):
                split[side] = {**location, "path": str((workspace / location["path"]).resolve())}
    return params, raw


def report_dir(workspace: Path, study: str) -> Path:
    return workspace / SWEEPS_DIR / study / "report"


def artifact_key(study: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return "s2s-sweep-" + re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-")


# ------------------------------------------------------------------------------ MLflow


def _experiment(registry: RegistryConfig, workspace: Path) -> tuple[MlflowClient, str]:
    client, _ = connect(registry, workspace)
    return client, client.get_experiment_by_name(registry.experiment).experiment_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def start_sweep_run(registry: RegistryConfig, workspace: Path, study: optuna.Study, spec: sweep.SweepSpec, storage: str) -> str:
    """The sweep's own MLflow run: the search space, the metric, where the study lives (no password)."""
    client, experiment = _experiment(registry, workspace)
    run = client.create_run(experiment, run_name=f"sweep {study.study_name}",
                            tags={"s2s.sweep": study.study_name, "s2s.sweep.role": "sweep"})  # fmt: skip
    _log_params(client, run.info.run_id, {"study": study.study_name, "storage": sweep.safe_url(storage),
                                          "direction": study.direction.name.lower(), "trials": spec.trials})  # fmt: skip
    client.log_text(run.info.run_id, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "sweep/space.yaml")
    return str(run.info.run_id)


def start_trial_run(
    registry: RegistryConfig, workspace: Path, parent: str, study: str, number: int, values: dict[str, Any]
) -> tuple[MlflowClient, str]:
    client, experiment = _experiment(registry, workspace)
    tags = {"mlflow.parentRunId": parent, "s2s.sweep": study, "s2s.sweep.role": "trial", "s2s.sweep.trial": str(number)}
    run = client.create_run(experiment, run_name=f"{study} trial {number}", tags=tags)
    _log_params(client, run.info.run_id, {**values, "sweep.trial": number})
    return client, run.info.run_id


def end_trial_run(client: MlflowClient, run_id: str, state: TrialState, value: float | None, detail: dict[str, Any]) -> None:
    if value is not None:
        client.log_metric(run_id, "sweep/value", value)
    client.set_tag(run_id, "s2s.sweep.state", state.name.lower())
    for key, item in detail.items():
        client.set_tag(run_id, f"s2s.sweep.{key}", str(item)[:5000])
    client.set_terminated(run_id, RUN_STATUS.get(state, "FAILED"))


# ------------------------------------------------------------------------------ one trial


class EpochWatcher:
    """Reads the trial's training curve as it grows: each new epoch to the study, its pruner and MLflow."""

    def __init__(self, trial: optuna.Trial, curve: Path, client: MlflowClient, run_id: str) -> None:
        self.trial, self.curve, self.client, self.run_id = trial, curve, client, run_id
        self.seen = 0
        self.pruned_at: int | None = None
        self.last: float | None = None  # the last validation score reported

    def epochs(self) -> list[EpochResult]:
        try:
            return read_curve(self.curve)
        except (ValueError, KeyError, TypeError):  # a row cut short by a concurrent rewrite: wait for the next look
            return []

    def poll(self, may_prune: bool = True) -> bool:
        """Report epochs not yet reported; True when the pruner says stop (only while `may_prune`)."""
        for result in self.epochs()[self.seen :]:
            self.last = result.valid_score
            self.trial.report(self.last, result.epoch)
            now = int(time.time() * 1000)
            metrics = [Metric(key, value, now, result.epoch) for key, value in result.mlflow_metrics().items()]
            self.client.log_batch(self.run_id, metrics=metrics)
            self.seen += 1
            if may_prune and self.trial.should_prune():
                self.pruned_at = result.epoch
                return True
        return False


def open_sweep(workspace: Path, space: Path, name: str | None, storage: str | None, trials: int | None) -> optuna.Study:
    """Create the study from the search-space file (with its MLflow run, its trials queued) or load it; queue up to
    `trials` (more than the file's count extends the sweep)."""
    params, raw = base_params(workspace)
    spec = sweep.load_spec(space)
    sweep.check_spec(spec, raw, str(space))
    url = storage_url(workspace, storage)

    def on_create(study: optuna.Study) -> None:
        study.set_user_attr(PARENT_RUN_ATTR, start_sweep_run(params.registry, workspace, study, spec, url))

    study, _ = sweep.open_study(name or space.stem, url, spec, params.train.select_metric, raw, on_create)
    if trials is not None:
        added = sweep.queue(study, trials)
        if added:
            logging.getLogger(__name__).info("study %s: %d more trials queued", study.study_name, added)
    return study


def write_report(
    workspace: Path, study: optuna.Study, registry: RegistryConfig
) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """Trial table, best trial, cost, importances and Optuna's plots into report_dir and the sweep's MLflow run; the
    summary, the report as Markdown and the table's rows."""
    rows, cost, importances = sweep.trial_rows(study), sweep.cost(study), sweep.importances(study)
    out = report_dir(workspace, study.study_name)
    out.mkdir(parents=True, exist_ok=True)
    plots = sweep.write_plots(study, out)
    with (out / "trials.csv").open("w", newline="") as handle:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    best = sweep.best_trial(study) if complete else None
    summary = {"study": study.study_name, "best_trial": best.number if best else None, "best_value": best.value if best else None,
               "best_params": best.params if best else None, "importances": importances, **cost}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent:
        client, _ = connect(registry, workspace)
        for path in [*plots, out / "trials.csv", out / "summary.json"]:
            client.log_artifact(parent, str(path), "sweep")
        if best is not None:
            client.log_metric(parent, "sweep/best_value", best.value)
            client.set_tag(parent, "s2s.sweep.best_trial", str(best.number))
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
        if not waiting:
            client.set_terminated(parent, RunStatus.to_string(RunStatus.FINISHED))
    metric = study.user_attrs.get(sweep.METRIC_ATTR, "bleu")
    best_line = (
        f"**Best: trial {best.number}, valid {metric} {best.value:.2f}** — {best.params}" if best else "No completed trial yet."
    )
    importance = ", ".join(f"{k} {v:.2f}" for k, v in importances.items()) or "not yet (needs two completed trials that differ)"
    markdown = (
        f"# Sweep {study.study_name}\n\n{best_line}\n\n"
        f"Trials: {cost['trials']}; {cost['hours']} h of trials; pruning saved about {cost['hours_saved_by_pruning']} h.\n\n"
        f"Parameter importances (fANOVA): {importance}\n\n"
        f"Plots (optimisation history, validation curves, importances): MLflow run `{parent}`, artifacts `sweep/`.\n\n"
        f"{sweep.markdown_table(rows)}"
    )
    return summary, markdown, rows
