"""Sweeps as Prefect flows: one flow run per trial, each running the real DVC stages in its own workspace.

A trial gets a fresh git + DVC workspace under `.cache/sweeps/STUDY/trial-NNN` (the checkout's stages and
code, the trial's params) that shares the checkout's DVC cache, so DVC's run-cache restores a stage another
trial already ran with the same deps and params (ingest always; the tokenizer for a vocabulary size seen
before) instead of running it again. `dvc repro train` runs ingest, tokenizer and train; the test split is
never decoded: trials are judged on the validation split only. While training runs, each epoch's validation
score goes to the study's pruner; a trial it stops gets SIGTERM (the train stage stops cleanly) and is recorded
as pruned. A stage that fails (a diverged loss, bad params) makes the trial failed, with the stage's own
message, and the sweep goes on.

Each trial is a nested MLflow run under the sweep's run (params, per-epoch curve, result, state); after each
trial the sweep's report (trial table, optimisation history, per-trial curves, parameter importances, cost)
is published as a Prefect artifact and into the sweep's MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import StageFailed, Stop, run_logged
from flows.stack import SWEEP_STORAGE_ENV
from flows.workspace import make_workspace
from s2s import layout, sweep
from s2s.config import Params, RegistryConfig, load_params
from s2s.registry import connect

SWEEPS_DIR = ".cache/sweeps"  # trial workspaces and reports, per study
DEFAULT_DB = "sweeps.db"  # the SQLite study database in the workspace, where nothing else is said
PARENT_RUN_ATTR = "s2s.mlflow_run"  # the sweep's MLflow run, a study user attribute
TRIAL_FLOW = "s2s-sweep-trial"  # the flow (and deployment) that runs one queued trial
RUN_STATUS = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED", TrialState.FAIL: "FAILED"}


def storage_url(workspace: Path, given: str | None = None) -> str:
    """The study's database: as given, else $S2S_SWEEP_STORAGE, else SQLite in the workspace."""
    return given or os.environ.get(SWEEP_STORAGE_ENV) or f"sqlite:///{workspace / DEFAULT_DB}"


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
    return run.info.run_id


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

    def rows(self) -> list[dict[str, str]]:
        try:
            with self.curve.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
        except FileNotFoundError:
            return []
        return [r for r in rows if r.get("seconds")]  # a row cut short by a concurrent rewrite waits for the next look

    def poll(self, may_prune: bool = True) -> bool:
        """Report epochs not yet reported; True when the pruner says stop (only while `may_prune`)."""
        for row in self.rows()[self.seen :]:
            epoch, self.last = int(row["epoch"]), float(row["valid_score"])
            self.trial.report(self.last, epoch)
            now = int(time.time() * 1000)
            metrics = [Metric(f"epoch/{k}", float(v), now, epoch) for k, v in row.items() if k != "epoch" and v != ""]
            self.client.log_batch(self.run_id, metrics=metrics)
            self.seen += 1
            if may_prune and self.trial.should_prune():
                self.pruned_at = epoch
                return True
        return False


@task(name="trial-workspace", task_run_name="trial {number}: workspace", cache_policy=NO_CACHE)
def trial_workspace(workspace: Path, study: str, number: int, raw: dict[str, Any]) -> Path:
    """A fresh workspace for the trial, sharing the checkout's DVC cache (and so its run-cache)."""
    root = workspace / SWEEPS_DIR / study / f"trial-{number:03d}"
    shutil.rmtree(root, ignore_errors=True)
    cache = workspace / ".dvc" / "cache"
    return make_workspace(root, raw, local_registry=False, source=workspace, cache_dir=cache if cache.parent.is_dir() else None)


@task(name="trial-stages", task_run_name="trial {number}: dvc repro train", cache_policy=NO_CACHE)
def trial_stages(root: Path, number: int, watcher: EpochWatcher) -> dict[str, Any]:
    """ingest, tokenizer and train (DVC), pruned by `watcher`; the train stage's summary (empty when pruned)."""
    args = [sys.executable, "-m", "dvc", "repro", layout.stage("train").name]
    try:
        run_logged(args, root, f"trial {number}", poll=watcher.poll)
    except StageFailed:
        if watcher.pruned_at is None:
            raise
        shutil.rmtree(root / layout.RESUME_DIR, ignore_errors=True)  # a pruned trial never resumes
        return {}
    watcher.poll(may_prune=False)  # the epochs the last look had not seen
    return json.loads((root / layout.TRAIN_SUMMARY).read_text())


def run_trial(
    workspace: Path, study: optuna.Study, trial: optuna.Trial, raw: dict[str, Any], registry: RegistryConfig
) -> dict[str, Any]:
    """Run one started trial to its end and record it; never raises for the trial's own failure (a stage's, bad
    params), only for the machinery's (the trial is recorded as failed first)."""
    logger = get_run_logger()
    spec, name, number = sweep.stored_spec(study), study.study_name, trial.number
    values = sweep.suggest(trial, spec)
    client, run_id = start_trial_run(registry, workspace, study.user_attrs[PARENT_RUN_ATTR], name, number, values)
    logger.info("trial %d of %s: %s", number, name, ", ".join(f"{k}={v}" for k, v in values.items()))
    detail: dict[str, Any] = {}
    value: float | None = None
    try:
        params = sweep.trial_params(raw, spec, values)
        root = trial_workspace(workspace, name, number, params.model_dump(mode="json"))
        detail["workspace"] = str(root)
        client.log_text(run_id, (root / layout.PARAMS_FILE).read_text(), "params.yaml")
        watcher = EpochWatcher(trial, root / layout.TRAIN_CURVE, client, run_id)
        summary = trial_stages(root, number, watcher)
        if watcher.pruned_at is not None:
            state, value, detail["pruned_at_epoch"] = TrialState.PRUNED, watcher.last, watcher.pruned_at
            study.tell(trial, state=state)
        else:
            state, value = TrialState.COMPLETE, float(summary["best_valid_score"])
            detail.update(epochs=summary["epochs"], tokens_per_second=summary["tokens_per_second"])
            study.tell(trial, value)
    except Exception as err:  # the trial's own failure (a stage, its params); anything else is recorded, then raised
        state, detail["error"] = TrialState.FAIL, str(err) or type(err).__name__
        if Stop.signum:  # stopped by the user, not by its own fault: the next `s2s sweep` runs these values again
            detail["error"] = f"interrupted by signal {Stop.signum}; queued again"
        trial.set_user_attr(sweep.ERROR_ATTR, detail["error"][:2000])
        study.tell(trial, state=state)
        if Stop.signum:
            sweep.requeue(study, trial)
        logger.warning("trial %d failed: %s", number, detail["error"])
        if not isinstance(err, StageFailed | sweep.SweepError):
            end_trial_run(client, run_id, state, value, detail)
            raise
    end_trial_run(client, run_id, state, value, detail)
    logger.info("trial %d %s%s", number, state.name.lower(), "" if value is None else f": valid {value:.2f}")
    return {"trial": number, "state": state.name.lower(), "value": value, "params": values, **detail}


@flow(name=TRIAL_FLOW, flow_run_name="{study}: next queued trial")
def sweep_trial(study: str, workspace: str = ".", storage: str | None = None) -> dict[str, Any] | None:
    """Take one queued trial of `study` and run it; None when the queue is empty. Deployed on a work pool,
    one flow run per trial: each worker that picks one up takes a different trial."""
    root = Path(workspace).resolve()
    params, raw = base_params(root)
    handle = sweep.load_study(study, storage_url(root, storage), metric=params.train.select_metric)
    raw = {**raw, **sweep.stored_recipe(handle)}  # every worker runs the recipe the study was made from; its own data
    trial = sweep.take_queued(handle)
    if trial is None:
        get_run_logger().info("study %s has no queued trial left", study)
        return None
    result = run_trial(root, handle, trial, raw, params.registry)
    publish_report(root, handle, params.registry)
    return result


# ------------------------------------------------------------------------------ the report


@task(name="sweep-report", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def publish_report(workspace: Path, study: optuna.Study, registry: RegistryConfig) -> dict[str, Any]:
    """Trial table, best trial, cost, importances and Optuna's plots: a Prefect artifact and the sweep's MLflow run."""
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
    create_markdown_artifact(markdown, key=artifact_key(study.study_name), description=f"s2s sweep {study.study_name}")
    create_table_artifact(rows, key=artifact_key(study.study_name) + "-trials", description="every trial of the sweep")
    return summary


# ------------------------------------------------------------------------------ the sweep


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


@flow(name="s2s-sweep", flow_run_name="sweep {study}")
def sweep_flow(study: str, workspace: str = ".", storage: str | None = None) -> dict[str, Any]:
    """Run `study`'s queued trials here, one after another (one subflow run each), until none is left or a stop."""
    root = Path(workspace).resolve()
    results = []
    handle = sweep.load_study(study, storage_url(root, storage))
    while not Stop.signum and handle.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        result = sweep_trial(study=study, workspace=str(root), storage=storage)
        if result is None:
            break
        results.append(result)
    params, _ = base_params(root)
    return {"ran": results, "report": publish_report(root, handle, params.registry)}
