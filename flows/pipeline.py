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

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from s2s.config import load_params
from s2s.ingest import read_prepared
from s2s.registry import DECISION_TAG, REASON_TAG, Registered, RunInputs, connect, lineage_key, register, run_gate, score_model

STAGES = ("ingest", "tokenizer", "train", "evaluate")
# Where the stages put things; the same paths as in dvc.yaml.
PATHS = {
    "prepared": "data/prepared",
    "ingest_stats": "metrics/ingest.json",
    "tokenizer_dir": "artifacts/tokenizer",
    "model_file": "artifacts/model/model.pt",
    "train_curve": "metrics/train_curve.csv",
    "train_summary": "metrics/train.json",
    "eval_metrics": "metrics/eval.json",
    "hypotheses": "reports/hypotheses.tsv",
    "attention_dir": "reports/attention",
}


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


@task(name="dvc-stage", task_run_name="dvc repro {stage}")
def dvc_stage(workspace: Path, stage: str, force: bool = False) -> bool:
    """Reproduce one stage if its deps or params changed; True when it ran."""
    args = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        args.append("--force")
    lines = run_logged(args, workspace, stage)
    return not any("didn't change, skipping" in line for line in lines)


@task(name="register", retries=2, retry_delay_seconds=5)
def register_model(workspace: Path, params_file: str) -> Registered:
    params = load_params(workspace / params_file)
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())
    key = lineage_key(lock, params.evaluate)
    commit = _git(workspace, "rev-parse", "HEAD") or "unknown"
    dirty = bool(_git(workspace, "status", "--porcelain", "--untracked-files=no"))
    stage_hashes = {
        f"dvc.{stage}.{Path(o['path']).name}": o.get("md5", "")
        for stage in ("ingest", "tokenizer", "train")
        for o in lock["stages"][stage].get("outs", [])
    }
    tags = {
        "git.commit": commit,
        "git.dirty": str(dirty).lower(),
        "prefect.flow_run_id": str(flow_run.get_id() or ""),
        **stage_hashes,
    }
    description = (
        f"Trained by the s2s pipeline from git commit {commit}{' (with local changes)' if dirty else ''}, "
        f"Prefect flow run {tags['prefect.flow_run_id']}; data {stage_hashes.get('dvc.ingest.prepared', '?')}, "
        f"tokenizer {stage_hashes.get('dvc.tokenizer.tokenizer', '?')} (dvc.lock md5)."
    )
    inputs = RunInputs(workspace=workspace, params=params, **{k: workspace / v for k, v in PATHS.items() if k != "prepared"})
    try:
        result = register(inputs, key, tags, description)
    except Exception as err:  # MLflow raises its own, requests' and OS errors for an unreachable server
        if type(err).__name__ not in ("MlflowException", "ConnectionError", "RestException") and not isinstance(err, OSError):
            raise
        raise RegistryUnavailable(
            f"MLflow registry at {params.registry.tracking_uri} failed: {err}. The trained model is kept in the DVC "
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
def dvc_push(workspace: Path, params_file: str) -> None:
    remote = load_params(workspace / params_file).remote
    url = Path(remote.url)
    url = url if url.is_absolute() or "://" in remote.url else (workspace / url).resolve()
    dvc = [sys.executable, "-m", "dvc"]
    # --local: the remote goes to .dvc/config.local, so a test's temporary remote never edits tracked config.
    run_logged([*dvc, "remote", "add", "--local", "--force", remote.name, str(url)], workspace, "dvc remote")
    run_logged([*dvc, "push", "--remote", remote.name], workspace, "dvc push")


@task(name="promotion-gate", retries=1, retry_delay_seconds=5)
def promotion_gate(workspace: Path, params_file: str, registered: Registered) -> dict[str, Any]:
    """Challenger vs champion on the current test set; see s2s.registry.run_gate."""
    params = load_params(workspace / params_file)
    logger = get_run_logger()
    if not params.promote.enabled:
        logger.info("promotion gate disabled (promote.enabled: false): champion unchanged")
        return {"decision": "skipped", "reason": "promote.enabled is false"}
    client, _ = connect(params.registry, workspace)
    tags = client.get_model_version(registered.name, registered.version).tags
    if not registered.created and DECISION_TAG in tags:
        logger.info("v%s was decided before (%s): gate skipped", registered.version, tags[DECISION_TAG])
        return {"decision": f"unchanged ({tags[DECISION_TAG]})", "reason": tags.get(REASON_TAG, "")}
    pairs = read_prepared(workspace / PATHS["prepared"], "test")
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    metric = params.promote.metric

    def scorer(version: str) -> float:
        value = score_model(f"models:/{registered.name}/{version}", sources, references, metric)
        logger.info("v%s: test %s %.2f", version, metric, value)
        return value

    decision = run_gate(client, registered.name, registered.version, metric, params.promote.margin, scorer)
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
    with (workspace / PATHS["hypotheses"]).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return rows[:n]


@flow(name="s2s-pipeline", log_prints=True)
def pipeline(workspace: str = ".", params_file: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    """ingest -> tokenizer -> train -> evaluate (DVC), register and gate in MLflow, push to the DVC remote."""
    root = Path(workspace).resolve()
    params = load_params(root / params_file)  # fail before any work on a bad params file
    with workspace_lock(root):
        ran = {stage: dvc_stage(root, stage, force) for stage in STAGES}
        registered = register_model(root, params_file)
        gate = promotion_gate(root, params_file, registered)
        if params.remote.push:
            dvc_push(root, params_file)
    metrics = json.loads((root / PATHS["eval_metrics"]).read_text())
    create_markdown_artifact(
        _report(metrics, registered, gate, ran, params.registry.ui_url),
        key="s2s-run-report",
        description="s2s pipeline run report",
    )
    create_table_artifact(
        _samples(root), key="s2s-sample-translations", description="first test sentences: source, reference, hypothesis"
    )
    return {"stages_ran": ran, "registered": asdict(registered), "gate": gate, "metrics": metrics}
