"""The s2s pipeline as a Prefect flow: thin tasks over DVC stages and the s2s library.

DVC decides what needs to run (an unchanged stage is skipped and `dvc.lock`
stays true); Prefect orders the stages, retries what may fail transiently,
keeps the run history and shows each stage's own output in its log.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from s2s import dvc, layout, summary
from s2s.config import Params, PromoteConfig, Quantization, RegistryConfig, load_params
from s2s.dvc import STOP_NOTICE, StageFailed
from s2s.errors import ExportError, S2SError
from s2s.eval_records import EvalReport
from s2s.promotion import ExportOutcome, GateOutcome
from s2s.registry import (
    CHAMPION,
    Registered,
    RegistryUnavailable,
    RunInputs,
    connect,
    export_alias,
    export_version,
    gate_registered,
    is_server,
    register_workspace,
)
from s2s.summary import RunResult
from s2s.task import resolve_registry
from s2s.train_records import TrainSummary
from s2s.workspace import WorkspaceBusy, workspace_lock

# MLflow retries an unreachable server for minutes by default; the register task retries instead (bounded).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
dvc.quiet_telemetry()  # unattended runs (a deployment's) start here, not in the command line


EXPECTED = (StageFailed, WorkspaceBusy, RegistryUnavailable, S2SError)  # failures whose message is the whole story


class OneMessage(logging.Filter):
    """For the console of `s2s run`: an expected failure is stated once, by the command itself, without a traceback.

    Prefect logs a failed task and flow with their tracebacks, then the final state restating the message; the
    Prefect API (the UI, a worker's log) still gets all of it. `s2s --verbose` leaves this filter off.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, EXPECTED) or getattr(record, STOP_NOTICE, False):
            return False
        message = record.getMessage()
        return not message.startswith("Finished in state Failed(")  # the command states the failure itself


def detach_local_api() -> None:
    """Start Prefect's temporary local API (a uvicorn subprocess, when no PREFECT_API_URL is set) in a session of its own.

    A terminal's Ctrl-C signals its whole foreground process group: the API stopped with it while the flow was still
    putting the stopped stage's outputs back and reporting its state, and `s2s run` hung without it (seen through a
    real Ctrl-C, `tests/test_readme.py`). `s2s run` handles the signal itself; the API stops when the run ends.
    """
    from prefect.server.api import server

    class DetachedSubprocess:
        def __getattr__(self, name: str) -> Any:
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
            return subprocess.Popen(*args, **{**kwargs, "start_new_session": True})

    server.subprocess = DetachedSubprocess()  # type: ignore[assignment, attr-defined]  # a stand-in for the module: a patch of Prefect (above)


def quiet_console() -> None:
    """Install OneMessage on the console handlers of Prefect's loggers."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # Prefect's console handler is the root's
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(OneMessage())


@task(name="track-raw-data", task_run_name=f"dvc add {layout.RAW_DIR}")
def track_raw_data(workspace: Path) -> list[str]:
    """Version own data: every file in RAW_DIR that git does not track is `dvc add`ed (new or changed), so the
    push carries exactly the raw data this run trains on and a clone can `dvc pull` it. `dvc repro` does the
    same for files added before; running single stages, the flow must do it itself."""
    files = dvc.untracked_raw_files(workspace)
    if files:
        dvc.add(workspace, files, get_run_logger())
    return files


@task(name="dvc-stage", task_run_name="dvc repro {stage}")
def dvc_stage(workspace: Path, stage: str, force: bool = False) -> bool:
    """Reproduce one stage if DVC finds its deps, params or outputs changed; True when it ran."""
    logger = get_run_logger()
    ran = force or stage in dvc.stale_stages(workspace, stage, logger=logger)
    dvc.reproduce(workspace, stage, force, logger)
    return ran


@task(name="register", retries=2, retry_delay_seconds=[5, 20])  # backoff: a lock held for a moment is waited out
def register_model(workspace: Path, registry: RegistryConfig) -> Registered:
    """Log the run and register its model, with the params and hashes dvc.lock recorded: what really ran."""
    result = register_workspace(workspace, registry, dvc.read_lock(workspace), str(flow_run.get_id() or ""))
    get_run_logger().info("%s %s version %s (run %s)", "registered" if result.created else "already registered",
                          result.name, result.version, result.run_id)  # fmt: skip
    return result


@task(name="dvc-push", retries=2, retry_delay_seconds=5)
def dvc_push(workspace: Path) -> None:
    dvc.push(workspace, get_run_logger())


@task(name="promotion-gate", retries=1, retry_delay_seconds=5)
def promotion_gate(workspace: Path, registry: RegistryConfig, promote: PromoteConfig, registered: Registered) -> GateOutcome:
    """Challenger vs champion on the current test set; see s2s.registry.gate_registered."""
    client, _ = connect(registry, workspace)
    inputs = RunInputs(workspace=workspace, registry=registry, trained_with=dvc.read_lock(workspace).params)
    return gate_registered(client, registered, promote, inputs, get_run_logger())


@task(name="export-champion", retries=1, retry_delay_seconds=5)
def export_champion(workspace: Path, registry: RegistryConfig, quantization: Quantization) -> ExportOutcome:
    """The new champion converted to CTranslate2 as its own version, under the alias champion-<quantization>."""
    logger = get_run_logger()
    client, _ = connect(registry, workspace)
    champion = client.get_model_version_by_alias(registry.name, CHAMPION)
    try:
        exported = export_version(client, registry.name, str(champion.version), quantization, workspace / ".cache" / "export")
    except ExportError as err:  # a recurrent champion: CTranslate2 runs Transformers only
        logger.warning("promote.export=%s: champion v%s not exported: %s", quantization, champion.version, err)
        return ExportOutcome(None, quantization, reason=str(err))
    alias = export_alias(quantization)  # export_version pointed it at the champion's export
    logger.info("champion v%s exported to CTranslate2 (%s): v%s, alias %s", champion.version, quantization,
                exported.version, alias)  # fmt: skip
    return ExportOutcome(exported.version, quantization, alias)


@flow(name="s2s-pipeline", log_prints=True)
def pipeline(workspace: str = ".", force: bool = False) -> RunResult:
    """ingest -> tokenizer -> encode -> train -> evaluate (DVC), push to the DVC remote, register and gate in MLflow.

    The stages read the workspace's params.yaml (DVC records what each ran with in dvc.lock); the flow reads
    and validates it once, up front, and hands its own tasks the typed sections they need.
    """
    root = Path(workspace).resolve()
    params: Params = load_params(root / layout.PARAMS_FILE)  # fail before any work on a bad params file
    registry = resolve_registry(params)
    with workspace_lock(root):
        track_raw_data(root)
        ran = {stage: dvc_stage(root, stage, force) for stage in layout.STAGE_NAMES}
        # Push before registering: a registered version's data is always in the remote (`s2s restore` needs it),
        # and a registry that is down leaves the trained model safe there too.
        if params.remote.push:
            dvc_push(root)
        registered = register_model(root, registry)
        gate = promotion_gate(root, registry, params.promote, registered)
        if params.promote.export and gate.promoted:
            gate = replace(gate, export=export_champion(root, registry, params.promote.export))
    metrics = EvalReport.read(root / layout.EVAL_METRICS)
    training = TrainSummary.read(root / layout.TRAIN_SUMMARY)
    ingest = json.loads((root / layout.INGEST_STATS).read_text())
    ui = registered.tracking_uri if is_server(registered.tracking_uri) else params.registry.ui_url  # a server is its own UI
    result = RunResult(ran, registered, gate, metrics, training, ingest)
    create_markdown_artifact(summary.markdown_report(result, ui), key="s2s-run-report", description="s2s pipeline run report")
    create_table_artifact(summary.sample_rows(root), key="s2s-sample-outputs",
                          description="first test items: source, reference, hypothesis")  # fmt: skip
    return result
