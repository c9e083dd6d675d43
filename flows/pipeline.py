"""The s2s pipeline as a Prefect flow: thin tasks over DVC stages and the s2s library.

DVC decides what needs to run (an unchanged stage is skipped and `dvc.lock`
stays true); Prefect orders the stages, retries what may fail transiently,
keeps the run history and shows each stage's own output in its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from s2s.config import load_params
from s2s.registry import Registered, RunInputs, lineage_key, register

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
    result = register(inputs, key, tags, description)
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


def _report(metrics: dict[str, Any], registered: Registered, ran: dict[str, bool]) -> str:
    rows = "\n".join(f"| {stage} | {'ran' if did else 'skipped (unchanged)'} |" for stage, did in ran.items())
    return (
        f"# s2s pipeline run\n\n"
        f"| metric | value |\n|---|---|\n"
        f"| test BLEU | {metrics['bleu']} |\n| test chrF | {metrics['chrf']} |\n| test TER | {metrics['ter']} |\n"
        f"| copy-the-source BLEU | {metrics['copy_source_bleu']} |\n\n"
        f"`{metrics['bleu_signature']}`\n\n"
        f"Model **{registered.name}** version **{registered.version}** "
        f"({'new' if registered.created else 'unchanged, already registered'}), MLflow run `{registered.run_id}` "
        f"in `{registered.tracking_uri}`.\n\n| stage | |\n|---|---|\n{rows}\n"
    )


@flow(name="s2s-pipeline", log_prints=True)
def pipeline(workspace: str = ".", params_file: str = "params.yaml", force: bool = False) -> dict[str, Any]:
    """ingest -> tokenizer -> train -> evaluate (DVC), then register in MLflow and push to the DVC remote."""
    root = Path(workspace).resolve()
    load_params(root / params_file)  # fail before any work on a bad params file
    ran = {stage: dvc_stage(root, stage, force) for stage in STAGES}
    registered = register_model(root, params_file)
    if load_params(root / params_file).remote.push:
        dvc_push(root, params_file)
    metrics = json.loads((root / PATHS["eval_metrics"]).read_text())
    create_markdown_artifact(_report(metrics, registered, ran), key="s2s-run-report", description="s2s pipeline run report")
    return {"stages_ran": ran, "registered": asdict(registered), "metrics": metrics}
