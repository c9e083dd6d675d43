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
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from s2s import layout, summary
from s2s.config import Params, PromoteConfig, Quantization, RegistryConfig, load_params
from s2s.errors import S2SError
from s2s.metrics import METRICS
from s2s.promotion import Floor
from s2s.registry import (
    CHAMPION,
    DECISION_TAG,
    REASON_TAG,
    Registered,
    RunInputs,
    cached_score,
    connect,
    export_alias,
    export_version,
    is_server,
    lineage_key,
    register,
    run_gate,
    score_model,
    score_tag,
    tracking_uri,
)
from s2s.task import resolve_registry

T = TypeVar("T")


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


STOP_NOTICE = "s2s_stop_notice"  # a log record's attribute: the forwarded stage line that says where it stopped
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

    server.subprocess = DetachedSubprocess()  # type: ignore[assignment]


def quiet_console() -> None:
    """Install OneMessage on the console handlers of Prefect's loggers."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):  # Prefect's console handler is the root's
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(OneMessage())


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


DVC_HINTS = ("To track the changes with git", "To enable auto staging", "Use `dvc push` to send")
DVC_STAGE_ERROR = "ERROR: failed to reproduce"  # DVC's restatement of a stage's failure; the stage said it first


class Stop:
    """A stop asked of this process (SIGINT/SIGTERM, see `request_stop`): passed on to the running commands."""

    signum: ClassVar[int] = 0
    notice: ClassVar[str] = ""  # the stage's line saying where it stopped: "stopped at epoch 2, step 40; run again ..."
    running: ClassVar[str] = ""  # what was running when the stop came (a stage, dvc push), for a stop without a notice
    children: ClassVar[set[subprocess.Popen[str]]] = set()


def request_stop(signum: int, frame: object = None) -> None:
    """A signal handler for `s2s run`: pass the signal to each running command's whole process group (the train
    stage saves its resume state and exits), and let the flow fail on that stage, which puts its outputs back."""
    Stop.signum = signum
    for child in list(Stop.children):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signum)


POLL_SECONDS = 2.0  # how often run_logged's `poll` looks (a sweep's pruner reads the training curve)


def run_logged(args: list[str], cwd: Path, what: str, poll: Callable[[], bool] | None = None) -> list[str]:
    """Run a command, forwarding every output line to the Prefect log as it comes.

    `poll`, if given, is called every POLL_SECONDS while the command runs; when it returns True the command's
    process group gets SIGTERM (the train stage saves its state and exits 143) and StageFailed follows as usual.
    """
    logger = get_run_logger()
    logger.info("$ %s", " ".join(args))
    if Stop.signum:
        raise StageFailed(f"{what} not started: stopping on signal {Stop.signum}")
    Stop.running = what
    lines: list[str] = []
    with subprocess.Popen(
        args, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,  # its own process group, so that a stop reaches DVC and the stage it runs alike
    ) as proc:  # fmt: skip
        Stop.children.add(proc)
        assert proc.stdout is not None
        done = threading.Event()
        if poll is not None:
            threading.Thread(target=_poll_until, args=(proc, poll, done, logger), daemon=True).start()

        def follow() -> None:
            hint = False
            for line in proc.stdout:  # type: ignore[union-attr]
                line = line.rstrip()
                lines.append(line)
                # DVC's advice to `git add`/`dvc push` (the flow pushes; committing is the user's call) is not shown.
                hint = line.startswith(DVC_HINTS) or (hint and (not line or line.startswith("\t")))
                stop_notice = "run again to resume" in line
                if stop_notice:
                    Stop.notice = line.split(": ", 1)[-1]
                if line and not hint and not line.startswith(DVC_STAGE_ERROR):
                    # `s2s run` states a stop once, itself, on its last line: its console skips the stage's (OneMessage).
                    logger.info("%s | %s", what, line, extra={STOP_NOTICE: stop_notice})

        try:
            follow()
        except BaseException as stop:  # Prefect turns SIGTERM into TerminationSignal; Ctrl-C outside `s2s run`
            signum = getattr(stop, "signal", signal.SIGINT if isinstance(stop, KeyboardInterrupt) else 0)
            if not signum:
                raise
            request_stop(signum)  # the command stops cleanly (the train stage saves its state); wait for it
            follow()
        finally:
            done.set()
            Stop.children.discard(proc)
    if proc.returncode != 0:
        # The stage's own error line says what went wrong (file, line, key); without one, the output's end.
        own = [line.split(": ", 1)[-1] for line in lines if " ERROR s2s." in line]
        if own:
            raise StageFailed(own[-1])
        tail = "\n".join(lines[-25:])
        raise StageFailed(f"{what} failed with exit code {proc.returncode}:\n{tail}")
    return lines


def _poll_until(proc: subprocess.Popen[str], poll: Callable[[], bool], done: threading.Event, logger: Any) -> None:
    while not done.wait(POLL_SECONDS) and proc.poll() is None:
        try:
            stop = poll()
        except Exception as err:  # a poll that fails (a database hiccup) must not leave the command unwatched for good
            logger.warning("poll failed, trying again: %s", err)
            continue
        if stop:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            return


def _git(workspace: Path, *args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


DVC_LOCKED = "Unable to acquire lock"  # DVC's message when another DVC process holds the workspace's lock
DVC_LOCK_WAITS = (2, 5, 10)  # seconds between our tries (DVC itself waits 3 s before giving up each time)


def waiting_for_dvc_lock(workspace: Path, call: Callable[[], T]) -> T:
    """`call()`, tried again after each of DVC_LOCK_WAITS while DVC's lock is held elsewhere; then one clear message."""
    for wait in (*DVC_LOCK_WAITS, None):
        try:
            return call()
        except StageFailed as err:
            if DVC_LOCKED not in str(err):
                raise
            if wait is None:
                lock = workspace / ".dvc" / "tmp" / "lock"
                raise StageFailed(
                    f"DVC's lock {lock} is held by {lock_holders(lock)}; tried {len(DVC_LOCK_WAITS) + 1} times over "
                    f"{sum(DVC_LOCK_WAITS)} s. Nothing ran and nothing was lost: run again once it is free."
                ) from None
            get_run_logger().warning("DVC's lock is held by another process: trying again in %d s", wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def stale_stages(workspace: Path, *stages: str) -> set[str]:
    """The stages DVC reports as changed (deps, params, command or outputs), from `dvc status --json`'s own data."""

    def status() -> set[str]:
        out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json", *stages], cwd=workspace, env=_env(),
                             capture_output=True, text=True)  # fmt: skip
        if out.returncode != 0:
            raise StageFailed(f"dvc status failed with exit code {out.returncode}:\n{out.stderr[-2000:]}")
        return set(json.loads(out.stdout or "{}")) & set(stages)

    return waiting_for_dvc_lock(workspace, status)


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
        add = [sys.executable, "-m", "dvc", "add", *(str(p.relative_to(workspace)) for p in files)]
        waiting_for_dvc_lock(workspace, lambda: run_logged(add, workspace, "dvc add"))
    return [str(p.relative_to(workspace)) for p in files]


@task(name="dvc-stage", task_run_name="dvc repro {stage}")
def dvc_stage(workspace: Path, stage: str, force: bool = False) -> bool:
    """Reproduce one stage if DVC finds its deps, params or outputs changed; True when it ran."""
    ran = force or stage in stale_stages(workspace, stage)
    args = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    if force:
        args.append("--force")
    # DVC deletes a stage's outputs before running it; uncached ones (metrics, plots) are not in its cache to restore.
    uncached = {path: (workspace / path).read_bytes() for path in layout.stage(stage).uncached if (workspace / path).is_file()}
    try:
        waiting_for_dvc_lock(workspace, lambda: run_logged(args, workspace, stage))
    except StageFailed as err:
        if str(err).startswith("DVC's lock"):  # DVC never started the stage: its outputs are untouched
            raise
        raise StageFailed(f"{err}\n{restore_outputs(workspace, stage, uncached)}") from None
    return ran


def restore_outputs(workspace: Path, stage: str, uncached: dict[str, bytes]) -> str:
    """Put a failed stage's last good outputs back: cached ones from the DVC cache (as dvc.lock records them), the
    uncached ones from the copy taken before it ran. Returns what was done, for the failure message."""
    for path, content in uncached.items():
        (workspace / path).parent.mkdir(parents=True, exist_ok=True)
        (workspace / path).write_bytes(content)
    outs = layout.stage(stage).outs
    lock = read_lock(workspace) if (workspace / layout.LOCK_FILE).is_file() else layout.LockView()
    if not all(out in lock.outs for out in outs):
        return f"{stage} had not succeeded here before: there were no earlier outputs to put back"
    out = subprocess.run([sys.executable, "-m", "dvc", "checkout", "--force", stage], cwd=workspace, env=_env(),
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode != 0:
        return f"putting back {stage}'s last good outputs failed too: {out.stderr.strip()[-500:]}"
    kept = ", ".join([*outs, *uncached])
    return f"{stage}'s last good outputs are back in place ({kept}), as dvc.lock records them: nothing was lost"


def read_lock(workspace: Path) -> layout.LockView:
    """dvc.lock as DVC reads it: YAML 1.2, so `amp: off` stays the string "off" (YAML 1.1 readers make it False)."""
    from dvc.utils.serialize import load_yaml

    return layout.LockView.from_lock(json.loads(json.dumps(load_yaml(workspace / layout.LOCK_FILE))))  # plain dicts


def lock_holders(path: Path) -> str:
    """Which other processes have `path` open (pid and command line), read from /proc; "another process" if unknown."""
    holders = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        pid = int(fd_dir.parent.name)
        if pid == os.getpid():
            continue
        try:
            if any(os.path.realpath(fd) == str(path.resolve()) for fd in fd_dir.iterdir()):
                cmdline = (fd_dir.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                holders.append(f"pid {pid} ({cmdline[:120]})")
        except OSError:  # gone, or not ours to read
            continue
    return ", ".join(holders) or "another process"


@task(name="register", retries=2, retry_delay_seconds=[5, 20])  # backoff: a lock held for a moment is waited out
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
    uri = tracking_uri(registry, workspace)
    kept = "The trained model is kept in the DVC cache; run the pipeline again once {} and it registers without retraining."
    try:
        result = register(inputs, key, tags, description)
    except Exception as err:  # MLflow raises its own, SQLAlchemy's, requests' and OS errors for a store it cannot use
        if "database is locked" in str(err) and uri.startswith("sqlite:///"):
            database = uri[len("sqlite:///") :]
            raise RegistryUnavailable(
                f"the MLflow registry database {database} is locked by {lock_holders(Path(database))}. "
                + kept.format("it is free")
            ) from None
        known = ("MlflowException", "ConnectionError", "RestException", "OperationalError")
        if type(err).__name__ not in known and not isinstance(err, OSError):
            raise
        raise RegistryUnavailable(f"MLflow registry at {uri} failed: {err}. " + kept.format("MLflow is back")) from err
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
        waiting_for_dvc_lock(workspace, lambda: run_logged([sys.executable, "-m", "dvc", "push"], workspace, "dvc push"))
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
    metric, tag = promote.metric, score_tag(sources, references, promote.metric)
    # The evaluate stage has just scored this very model, decoding as it was registered to, on this test set.
    evaluated = json.loads((workspace / layout.EVAL_METRICS).read_text())

    def decode(version: str) -> float:
        def progress(done: int, total: int) -> None:
            logger.info("v%s: decoding the test set for the gate: %d/%d sentences (%d%%)", version, done, total,
                        100 * done // total)  # fmt: skip

        return score_model(f"models:/{registered.name}/{version}", sources, references, metric, progress)

    def scorer(version: str) -> float:
        if version == registered.version:
            value = cached_score(client, registered.name, version, tag, lambda: float(evaluated[metric]))
        else:  # decoded once per version and test set, then read from the version's tag
            value = cached_score(client, registered.name, version, tag, lambda: decode(version))
        logger.info("v%s: test %s %.2f", version, metric, value)
        return value

    bound = promote.min_score if METRICS[metric].higher_is_better else promote.max_score
    floor = Floor(metric, copy_source=float(evaluated[f"copy_source_{metric}"]), bound=bound)
    task = RunInputs(workspace=workspace, registry=registry, trained_with=read_lock(workspace).params).task
    decision = run_gate(client, registered.name, registered.version, metric, promote.margin, scorer, floor, task)
    (logger.warning if decision.refused else logger.info)("gate: %s", decision.reason)
    return {"decision": decision.verdict, **asdict(decision)}


@task(name="export-champion", retries=1, retry_delay_seconds=5)
def export_champion(workspace: Path, registry: RegistryConfig, quantization: Quantization, arch: str) -> dict[str, Any]:
    """The new champion converted to CTranslate2 as its own version, under the alias champion-<quantization>."""
    logger = get_run_logger()
    if arch != "transformer":
        logger.warning("promote.export=%s: the champion is a %s model, which CTranslate2 cannot run; not exported",
                       quantization, arch)  # fmt: skip
        return {"exported": None, "reason": f"model.arch {arch}: CTranslate2 runs Transformers only"}
    client, _ = connect(registry, workspace)
    champion = client.get_model_version_by_alias(registry.name, CHAMPION)
    exported = export_version(client, registry.name, str(champion.version), quantization, workspace / ".cache" / "export")
    alias = export_alias(quantization)  # export_version pointed it at the champion's export
    logger.info("champion v%s exported to CTranslate2 (%s): v%s, alias %s", champion.version, quantization,
                exported.version, alias)  # fmt: skip
    return {"exported": exported.version, "alias": alias, "quantization": quantization}


def _export_line(export: dict[str, Any] | None) -> str:
    if not export:
        return ""
    if export.get("exported") is None:
        return f"CTranslate2 export: none ({export['reason']})\n\n"
    return f"CTranslate2 export ({export['quantization']}): v{export['exported']}, alias `{export['alias']}`\n\n"


def _report(
    metrics: dict[str, Any],
    registered: Registered,
    gate: dict[str, Any],
    ran: dict[str, bool],
    ui: str,
    training: dict[str, Any],
    ingest: dict[str, Any],
) -> str:
    rows = "\n".join(f"| {stage} | {'ran' if did else 'skipped (unchanged)'} |" for stage, did in ran.items())
    also = "".join(f"| {label} | {text} |\n" for label, text in summary.test_lines(metrics)[1:])  # evaluate.also
    run_link = f"{ui}/#/experiments/{registered.experiment_id}/runs/{registered.run_id}"
    version_link = f"{ui}/#/models/{registered.name}/versions/{registered.version}"
    champion = gate.get("champion")
    vs = f"{champion:.2f} (v{gate.get('champion_version')})" if isinstance(champion, float) else "none"
    return (
        f"# s2s pipeline run\n\n"
        f"| test set | this model | champion |\n|---|---|---|\n"
        f"| {gate.get('metric', 'bleu')} | {gate.get('challenger', metrics['bleu'])} | {vs} |\n\n"
        f"**Gate: {gate['decision']}** — {gate.get('reason', '')}\n\n"
        f"{_export_line(gate.get('export'))}"
        f"| metric | value |\n|---|---|\n"
        f"| BLEU | {metrics['bleu']} |\n| chrF | {metrics['chrf']} |\n| TER (lower is better) | {metrics['ter']} |\n"
        f"| ROUGE-1 / ROUGE-2 / ROUGE-L (F) | {metrics['rouge1']} / {metrics['rouge2']} / {metrics['rougeL']} |\n"
        f"| copy-the-source BLEU | {metrics['copy_source_bleu']} |\n{also}\n"
        f"`{metrics['bleu_signature']}`\n\n"
        f"Training: {summary.training_line(training)}\n\nData: {summary.data_line(ingest, training)}\n\n"
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
        if params.promote.export and gate["decision"] == "promoted":
            gate["export"] = export_champion(root, registry, params.promote.export, params.model.arch)
    metrics = json.loads((root / layout.EVAL_METRICS).read_text())
    training = json.loads((root / layout.TRAIN_SUMMARY).read_text())
    ingest = json.loads((root / layout.INGEST_STATS).read_text())
    ui = registered.tracking_uri if is_server(registered.tracking_uri) else params.registry.ui_url  # a server is its own UI
    create_markdown_artifact(
        _report(metrics, registered, gate, ran, ui, training, ingest),
        key="s2s-run-report",
        description="s2s pipeline run report",
    )
    create_table_artifact(
        _samples(root), key="s2s-sample-translations", description="first test sentences: source, reference, hypothesis"
    )
    return {"stages_ran": ran, "registered": asdict(registered), "gate": gate, "metrics": metrics, "training": training,
            "ingest": ingest}  # fmt: skip
