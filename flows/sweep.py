"""Sweeps as Prefect flows: one flow run per trial, each running the real DVC stages in its own workspace.

A trial gets a fresh git + DVC workspace under `.cache/sweeps/STUDY/trial-NNN` (the checkout's stages and
code, the trial's params) that shares the checkout's DVC cache, so DVC's run-cache restores a stage another
trial already ran with the same deps and params (ingest always; the tokenizer for a vocabulary size seen
before) instead of running it again. `dvc repro train` runs ingest, tokenizer, encode and train; the test split is
never decoded: trials are judged on the validation split only. While training runs, each epoch's validation
score goes to the study's pruner; a trial it stops gets SIGTERM (the train stage stops cleanly) and is recorded
as pruned. A stage that fails (a diverged loss, bad params) makes the trial failed, with the stage's own
message, and the sweep goes on.

Each trial is a nested MLflow run under the sweep's run (params, per-epoch curve, result, state); after each
trial the sweep's report (trial table, optimisation history, per-trial curves, parameter importances, cost)
is published as a Prefect artifact and into the sweep's MLflow run.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from s2s import dvc, layout, sweep, sweep_runs
from s2s.config import RegistryConfig
from s2s.dvc import StageFailed, Stop, run_logged
from s2s.train_records import TrainSummary
from s2s.workspace import make_workspace

TRIAL_FLOW = "s2s-sweep-trial"  # the flow (and deployment) that runs one queued trial


@task(name="trial-workspace", task_run_name="trial {number}: workspace", cache_policy=NO_CACHE)
def trial_workspace(workspace: Path, study: str, number: int, raw: dict[str, Any]) -> Path:
    """A fresh workspace for the trial, sharing the checkout's DVC cache (and so its run-cache)."""
    root = workspace / sweep_runs.SWEEPS_DIR / study / f"trial-{number:03d}"
    shutil.rmtree(root, ignore_errors=True)
    cache = workspace / ".dvc" / "cache"
    return make_workspace(root, raw, local_registry=False, source=workspace, cache_dir=cache if cache.parent.is_dir() else None)


@task(name="trial-stages", task_run_name="trial {number}: dvc repro train", cache_policy=NO_CACHE)
def trial_stages(root: Path, number: int, watcher: sweep_runs.EpochWatcher) -> TrainSummary | None:
    """ingest, tokenizer, encode and train (DVC), pruned by `watcher`; the train stage's summary (None when pruned)."""
    args = dvc.command("repro", layout.stage("train").name)
    try:
        run_logged(args, root, f"trial {number}", get_run_logger(), poll=watcher.poll)
    except StageFailed:
        if watcher.pruned_at is None:
            raise
        shutil.rmtree(root / layout.RESUME_DIR, ignore_errors=True)  # a pruned trial never resumes
        return None
    watcher.poll(may_prune=False)  # the epochs the last look had not seen
    return TrainSummary.read(root / layout.TRAIN_SUMMARY)


def run_trial(
    workspace: Path, study: optuna.Study, trial: optuna.Trial, raw: dict[str, Any], registry: RegistryConfig
) -> dict[str, Any]:
    """Run one started trial to its end and record it; never raises for the trial's own failure (a stage's, bad
    params), only for the machinery's (the trial is recorded as failed first)."""
    logger = get_run_logger()
    spec, name, number = sweep.stored_spec(study), study.study_name, trial.number
    values = sweep.suggest(trial, spec)
    client, run_id = sweep_runs.start_trial_run(
        registry, workspace, study.user_attrs[sweep_runs.PARENT_RUN_ATTR], name, number, values
    )
    logger.info("trial %d of %s: %s", number, name, ", ".join(f"{k}={v}" for k, v in values.items()))
    detail: dict[str, Any] = {}
    value: float | None = None
    try:
        params = sweep.trial_params(raw, spec, values)
        root = trial_workspace(workspace, name, number, params.model_dump(mode="json"))
        detail["workspace"] = str(root)
        client.log_text(run_id, (root / layout.PARAMS_FILE).read_text(), "params.yaml")
        watcher = sweep_runs.EpochWatcher(trial, root / layout.TRAIN_CURVE, client, run_id)
        summary = trial_stages(root, number, watcher)
        if summary is None:
            state, value, detail["pruned_at_epoch"] = TrialState.PRUNED, watcher.last, watcher.pruned_at
            study.tell(trial, state=state)
        else:
            state, value = TrialState.COMPLETE, summary.best_valid_score
            detail.update(epochs=summary.epochs, tokens_per_second=summary.tokens_per_second)
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
            sweep_runs.end_trial_run(client, run_id, state, value, detail)
            raise
    sweep_runs.end_trial_run(client, run_id, state, value, detail)
    logger.info("trial %d %s%s", number, state.name.lower(), "" if value is None else f": valid {value:.2f}")
    return {"trial": number, "state": state.name.lower(), "value": value, "params": values, **detail}


@flow(name=TRIAL_FLOW, flow_run_name="{study}: next queued trial")
def sweep_trial(study: str, workspace: str = ".", storage: str | None = None) -> dict[str, Any] | None:
    """Take one queued trial of `study` and run it; None when the queue is empty. Deployed on a work pool,
    one flow run per trial: each worker that picks one up takes a different trial."""
    root = Path(workspace).resolve()
    params, raw = sweep_runs.base_params(root)
    handle = sweep.load_study(study, sweep_runs.storage_url(root, storage), metric=params.train.select_metric)
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
    summary, markdown, rows = sweep_runs.write_report(workspace, study, registry)
    create_markdown_artifact(markdown, key=sweep_runs.artifact_key(study.study_name), description=f"s2s sweep {study.study_name}")
    create_table_artifact(rows, key=sweep_runs.artifact_key(study.study_name) + "-trials", description="every trial of the sweep")
    return summary


# ------------------------------------------------------------------------------ the sweep


@flow(name="s2s-sweep", flow_run_name="sweep {study}")
def sweep_flow(study: str, workspace: str = ".", storage: str | None = None) -> dict[str, Any]:
    """Run `study`'s queued trials here, one after another (one subflow run each), until none is left or a stop."""
    root = Path(workspace).resolve()
    results = []
    handle = sweep.load_study(study, sweep_runs.storage_url(root, storage))
    while not Stop.signum and handle.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        result = sweep_trial(study=study, workspace=str(root), storage=storage)
        if result is None:
            break
        results.append(result)
    params, _ = sweep_runs.base_params(root)
    return {"ran": results, "report": publish_report(root, handle, params.registry)}
