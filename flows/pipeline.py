"""The s2s pipeline as a Prefect flow: thin tasks over DVC stages and the s2s library.

DVC decides what needs to run (an unchanged stage is skipped and `dvc.lock`
stays true); Prefect orders the stages, retries what may fail transiently,
keeps the run history and shows each stage's own output in its log.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from s2s import layout
from s2s.config import Params, PromoteConfig, RegistryConfig, load_params
from s2s.registry import (
    DECISION_TAG,
    REASON_TAG,
    Registered,
    RunInputs,
    connect,
    is_server,
    lineage_key,
    register,
    run_gate,
    score_model,
    tracking_uri,
)


class StageFailed(RuntimeError):
    pass


class WorkspaceBusy(RuntimeError):
    pass


class RegistryUnavailable(RuntimeError):
    pass


# MLflow retries an unreachable server for minutes by default; the register task retries instead (bounded).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# No usage telemetry from unattended runs (they often have no way out, and a failed send only adds noise).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


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


def _env() -> dict[str, str]:
    """The stages' `python` and `dvc` are this interpreter's, whatever PATH the caller had."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_logged(args: list[str], cwd: Path, what: str) -> list[str]:
    """Run a command, forwarding every output line to the Prefect log as it comes."""
    logger = get_run_logger()
    logger.info("$ %s", " ".join(args))
    lines: list[str] = []
    with subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            lines.append(line)
            logger.info("%s | %s", what, line)
    if proc.returncode != 0:
        tail = "\n".join(lines[-25:])
        raise StageFailed(f"{what} failed with exit code {proc.returncode}:\n{tail}")
    return lines


def _git(workspace: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def stale_stages(workspace: Path, *stages: str) -> set[str]:
    """The stages DVC reports as changed (deps, params, command or outputs), from `dvc status --json`'s own data."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=workspace, env=_env(), capture_output=True, text=True
    )
    if out.returncode != 0:
        raise StageFailed(f"dvc status failed with exit code {out.returncode}:\n{out.stderr[-2000:]}")
    return set(json.loads(out.stdout or "{}")) & set(stages)


@task(name="track-raw-data", task_run_name=f"dvc add {layout.RAW_DIR}")
def track_raw_data(workspace: Path) -> list[str]:
    """Version own data: every file in RAW_DIR that git does not track is `dvc add`ed (new or changed), so the
    push carries exactly the raw data this run trains on and a clone can `dvc pull` it. `dvc repro` does the
    same for files added before; running single stages, the flow must do it itself."""
    raw = workspace / layout.RAW_DIR
    if not raw.is_dir():  # DVC itself then stops at the ingest stage's missing dep, naming it
        return []
    files = [p for p in sorted(raw.iterdir()) if p.is_file() and not p.name.startswith(".") and p.suffix != ".dvc"]
    files = [p for p in files if not _git(workspace, "ls-files", str(p.relative_to(workspace)))]
    if files:
        run_logged([sys.executable, "-m", "dvc", "add", *(str(p.relative_to(workspace)) for p in files)], workspace, "dvc add")
    return [str(p.relative_to(workspace)) for p in files]


@task(name="dvc-stage", task_run_name="dvc repro {stage}")
def dvc_stage(workspace: Path, stage: str, force: bool = False) -> bool:
    """Reproduce one stage if DVC finds its deps, params or outputs changed; True when it ran."""
    ran = force or stage in stale_stages(workspace, stage)
    args = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        args.append("--force")
    run_logged(args, workspace, stage)
    return ran


def read_lock(workspace: Path) -> layout.LockView:
    """dvc.lock as DVC reads it: YAML 1.2, so `amp: off` stays the string "off" (YAML 1.1 readers make it False)."""
    from dvc.utils.serialize import load_yaml

    return layout.LockView.from_lock(json.loads(json.dumps(load_yaml(workspace / layout.LOCK_FILE))))  # plain dicts


@task(name="register", retries=2, retry_delay_seconds=5)
def register_model(workspace: Path, registry: RegistryConfig) -> Registered:
    """Log the run and register its model, with the params and hashes dvc.lock recorded: what really ran."""
    lock = read_lock(workspace)
    inputs = RunInputs(workspace=workspace, registry=registry, trained_with=lock.params)
    key = lineage_key(lock.outs, inputs.decoding)
    commit = _git(workspace, "rev-parse", "HEAD") or "unknown"
    dirty = bool(_git(workspace, "status", "--porcelain", "--untracked-files=no"))
    stage_hashes = {f"dvc.{stage}.{Path(path).name}": lock.outs.get(path, "") for stage, path in layout.LINEAGE_OUTS.items()}
    tags = {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        **stage_hashes,
    }
    description = (
        f"Trained by the s2s pipeline from git commit {commit}{' (with local changes)' if dirty else ''}, "
        f"Prefect flow run {tags['prefect.flow_run_id']}; data {stage_hashes.get('dvc.ingest.prepared', '?')}, "
        f"tokenizer {stage_hashes.get('dvc.tokenizer.tokenizer', '?')} (dvc.lock md5). "
        "`s2s restore VERSION` puts its data, tokenizer and model files back from the DVC remote."
    )
    try:
        result = register(inputs, key, tags, description)
    except Exception as err:  # MLflow raises its own, requests' and OS errors for an unreachable server
        if type(err).__name__ not in ("MlflowException", "ConnectionError", "RestException") and not isinstance(err, OSError):
            raise
        raise RegistryUnavailable(
            f"MLflow registry at {tracking_uri(registry, workspace)} failed: {err}. The trained model is kept in the DVC "
            "cache; run the pipeline again once MLflow is back and it registers the model without retraining."
        ) from err
    get_run_logger().info(
        "%s %s version %s (run %s)",
        "registered" if result.created else "already registered",
        result.name,
        result.version,
        result.run_id,
    )
    return result


@task(name="dvc-push", retries=2, retry_delay_seconds=5)
def dvc_push(workspace: Path) -> None:
    """Push to DVC's default remote (.dvc/config; `dvc remote modify --local` points a checkout elsewhere)."""
    try:
        run_logged([sys.executable, "-m", "dvc", "push"], workspace, "dvc push")
    except StageFailed as err:
        raise StageFailed(f"{err}\n(the DVC remote is configured in .dvc/config: `dvc remote list` shows it)") from None


@task(name="promotion-gate", retries=1, retry_delay_seconds=5)
def promotion_gate(workspace: Path, registry: RegistryConfig, promote: PromoteConfig, registered: Registered) -> dict[str, Any]:
    """Challenger vs champion on the current test set; see s2s.registry.run_gate."""
    logger = get_run_logger()
    if not promote.enabled:
        logger.info("promotion gate disabled (promote.enabled: false): champion unchanged")
        return {"decision": "skipped", "reason": "promote.enabled is false"}
    client, _ = connect(registry, workspace)
    tags = client.get_model_version(registered.name, registered.version).tags
    if not registered.created and DECISION_TAG in tags:
        logger.info("v%s was decided before (%s): gate skipped", registered.version, tags[DECISION_TAG])
        return {"decision": f"unchanged ({tags[DECISION_TAG]})", "reason": tags.get(REASON_TAG, "")}
    pairs = layout.read_prepared(workspace / layout.PREPARED_DIR, "test")
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    metric = promote.metric

    def scorer(version: str) -> float:
        value = score_model(f"models:/{registered.name}/{version}", sources, references, metric)
        logger.info("v%s: test %s %.2f", version, metric, value)
        return value

    decision = run_gate(client, registered.name, registered.version, metric, promote.margin, scorer)
    logger.info("gate: %s", decision.reason)
    return {"decision": "promoted" if decision.promote else "rejected", **asdict(decision)}


def _report(metrics: dict[str, Any], registered: Registered, gate: dict[str, Any], ran: dict[str, bool], ui: str) -> str:
    rows = "\n".join(f"| {stage} | {'ran' if did else 'skipped (unchanged)'} |" for stage, did in ran.items())
    run_link = f"{ui}/#/experiments/{registered.experiment_id}/runs/{registered.run_id}"
    version_link = f"{ui}/#/models/{registered.name}/versions/{registered.version}"
    champion = gate.get("champion")
    vs = f"{champion:.2f} (v{gate.get('champion_version')})" if isinstance(champion, float) else "none"
    return (
        f"# s2s pipeline run\n\n"
        f"| test set | this model | champion |\n|---|---|---|\n"
        f"| {gate.get('metric', 'bleu')} | {gate.get('challenger', metrics['bleu'])} | {vs} |\n\n"
        f"**Gate: {gate['decision']}** — {gate.get('reason', '')}\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| BLEU | {metrics['bleu']} |\n| chrF | {metrics['chrf']} |\n| TER | {metrics['ter']} |\n"
        f"| copy-the-source BLEU | {metrics['copy_source_bleu']} |\n\n"
        f"`{metrics['bleu_signature']}`\n\n"
        f"Model **[{registered.name} v{registered.version}]({version_link})** "
        f"({'new' if registered.created else 'unchanged, already registered'}); "
        f"MLflow run [{registered.run_id}]({run_link}) in `{registered.tracking_uri}`.\n\n"
        f"| stage | |\n|---|---|\n{rows}\n"
    )


def _samples(workspace: Path, n: int = 10) -> list[dict[str, str]]:
    with (workspace / layout.HYPOTHESES).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return rows[:n]


@flow(name="s2s-pipeline", log_prints=True)
def pipeline(workspace: str = ".", force: bool = False) -> dict[str, Any]:
    """ingest -> tokenizer -> train -> evaluate (DVC), push to the DVC remote, register and gate in MLflow.

    The stages read the workspace's params.yaml (DVC records what each ran with in dvc.lock); the flow reads
    and validates it once, up front, and hands its own tasks the typed sections they need.
    """
    root = Path(workspace).resolve()
    params: Params = load_params(root / layout.PARAMS_FILE)  # fail before any work on a bad params file
    with workspace_lock(root):
        track_raw_data(root)
        ran = {stage: dvc_stage(root, stage, force) for stage in layout.STAGE_NAMES}
        # Push before registering: a registered version's data is always in the remote (`s2s restore` needs it),
        # and a registry that is down leaves the trained model safe there too.
        if params.remote.push:
            dvc_push(root)
        registered = register_model(root, params.registry)
        gate = promotion_gate(root, params.registry, params.promote, registered)
    metrics = json.loads((root / layout.EVAL_METRICS).read_text())
    ui = registered.tracking_uri if is_server(registered.tracking_uri) else params.registry.ui_url  # a server is its own UI
    create_markdown_artifact(
        _report(metrics, registered, gate, ran, ui),
        key="s2s-run-report",
        description="s2s pipeline run report",
    )
    create_table_artifact(
        _samples(root), key="s2s-sample-translations", description="first test sentences: source, reference, hypothesis"
    )
    return {"stages_ran": ran, "registered": asdict(registered), "gate": gate, "metrics": metrics}
