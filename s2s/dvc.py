"""Running DVC: the one owner of how s2s calls it (interpreter, environment, lock retries, status, checkout).

Commands run as `python -m dvc` of this interpreter, with its folder first on PATH so the stages' `python` is this
environment's whatever PATH the caller had. `run_logged` streams a command's lines to a logger (the flow passes
Prefect's) and passes a stop request on to it; a stage that stops or fails says how in its StageStatus record
(s2s.stage_status), which is what the caller is told, never a parse of its log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from s2s import layout, stage_status

T = TypeVar("T")
Logger = logging.Logger | logging.LoggerAdapter[Any]  # Prefect's run logger is an adapter
log = logging.getLogger(__name__)

STOP_NOTICE = "s2s_stop_notice"  # a log record's attribute: the forwarded stage line that says where it stopped
# No usage telemetry from any tool s2s starts: these machines often have no way out, and a failed send is noise.
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1"}
BIN = Path(sys.executable).parent  # this environment's tools: python, dvc, mlflow, prefect, uvicorn


def command(*args: str) -> list[str]:
    """`dvc ARGS` as this interpreter's module."""
    return [sys.executable, "-m", "dvc", *args]


def env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """`base` (this process's environment) with BIN first on PATH, so the tools a command starts (the stages'
    `python`, dvc, uvicorn) are this environment's whether or not it was activated; lines unbuffered, no telemetry."""
    base = dict(os.environ if base is None else base)
    path = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    return {**base, "PATH": path, "PYTHONUNBUFFERED": "1", **TELEMETRY_OFF, **extra}


def quiet_telemetry() -> None:
    """This process too (MLflow and Prefect read the switches at use), unless the user set them."""
    for name, value in TELEMETRY_OFF.items():
        os.environ.setdefault(name, value)


def run(args: list[str], cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command (`command(...)` or another of this environment's tools), its output captured as text."""
    return subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, **kwargs)


class StageFailed(RuntimeError):
    pass


class DVCLockHeld(StageFailed):
    """DVC's lock stayed held by another process: nothing ran."""


DVC_HINTS = ("To track the changes with git", "To enable auto staging", "Use `dvc push` to send")
DVC_STAGE_ERROR = "ERROR: failed to reproduce"  # DVC's restatement of a stage's failure; the stage said it first


class Stop:
    """A stop asked of this process (SIGINT/SIGTERM, see `request_stop`): passed on to the running commands."""

    signum: ClassVar[int] = 0
    notice: ClassVar[str] = ""  # where the stage says it stopped (its StageStatus): "stopped at epoch 2, step 40; ..."
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


def run_logged(args: list[str], cwd: Path, what: str, logger: Logger = log, poll: Callable[[], bool] | None = None) -> list[str]:
    """Run a command, forwarding every output line to `logger` (the flow passes Prefect's) as it comes.

    `poll`, if given, is called every POLL_SECONDS while the command runs; when it returns True the command's
    process group gets SIGTERM (the train stage saves its state and exits 143) and StageFailed follows as usual.
    """
    logger.info("$ %s", " ".join(args))
    if Stop.signum:
        raise StageFailed(f"{what} not started: stopping on signal {Stop.signum}")
    Stop.running = what
    stage_status.clear(cwd)  # what is there after the command is its own
    lines: list[str] = []
    with subprocess.Popen(
        args, cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        start_new_session=True,  # its own process group, so that a stop reaches DVC and the stage it runs alike
    ) as proc:  # fmt: skip
        Stop.children.add(proc)
        assert proc.stdout is not None
        stdout = proc.stdout
        done = threading.Event()
        if poll is not None:
            threading.Thread(target=_poll_until, args=(proc, poll, done, logger), daemon=True).start()

        def follow() -> None:
            hint = False
            for line in stdout:
                line = line.rstrip()
                lines.append(line)
                # DVC's advice to `git add`/`dvc push` (the flow pushes; committing is the user's call) is not shown.
                hint = line.startswith(DVC_HINTS) or (hint and (not line or line.startswith("\t")))
                stop_notice = is_stop_notice(cwd, line)
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
        # The stage's own record says what went wrong (file, line, key) or where it stopped; without one, the output's end.
        ended = stage_status.read_all(cwd)
        stopped = [s for s in ended if s.outcome == "stopped"]
        if stopped:
            Stop.notice = stopped[-1].message
        if ended:
            raise StageFailed(ended[-1].message)
        tail = "\n".join(lines[-25:])
        raise StageFailed(f"{what} failed with exit code {proc.returncode}:\n{tail}")
    return lines


def is_stop_notice(cwd: Path, line: str) -> bool:
    """Whether `line` is a stage saying where it stopped: the stage writes its record before it says so."""
    return any(s.outcome == "stopped" and s.message in line for s in stage_status.read_all(cwd))


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


def git(workspace: Path, *args: str) -> str:
    """A git command's output in `workspace`; empty when git fails (no repository, no commit)."""
    try:
        return subprocess.run(["git", *args], cwd=workspace, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


DVC_LOCKED = "Unable to acquire lock"  # DVC's message when another DVC process holds the workspace's lock
DVC_LOCK_WAITS = (2, 5, 10)  # seconds between our tries (DVC itself waits 3 s before giving up each time)


def waiting_for_dvc_lock(workspace: Path, call: Callable[[], T], logger: Logger = log) -> T:
    """`call()`, tried again after each of DVC_LOCK_WAITS while DVC's lock is held elsewhere; then one clear message."""
    for wait in (*DVC_LOCK_WAITS, None):
        try:
            return call()
        except StageFailed as err:
            if DVC_LOCKED not in str(err):
                raise
            if wait is None:
                lock = workspace / ".dvc" / "tmp" / "lock"
                raise DVCLockHeld(
                    f"DVC's lock {lock} is held by {lock_holders(lock)}; tried {len(DVC_LOCK_WAITS) + 1} times over "
                    f"{sum(DVC_LOCK_WAITS)} s. Nothing ran and nothing was lost: run again once it is free."
                ) from None
            logger.warning("DVC's lock is held by another process: trying again in %d s", wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def stale_stages(workspace: Path, *stages: str, logger: Logger = log) -> set[str]:
    """The stages DVC reports as changed (deps, params, command or outputs), from `dvc status --json`'s own data."""

    def status() -> set[str]:
        out = run(command("status", "--json", *stages), workspace)
        if out.returncode != 0:
            raise StageFailed(f"dvc status failed with exit code {out.returncode}:\n{out.stderr[-2000:]}")
        return set(json.loads(out.stdout or "{}")) & set(stages)

    return waiting_for_dvc_lock(workspace, status, logger)


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
    out = run(command("checkout", "--force", stage), workspace)
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


def reproduce(workspace: Path, stage: str, force: bool, logger: Logger = log) -> None:
    """`dvc repro --single-item STAGE` (waiting out DVC's lock), and on failure the stage's last good outputs put
    back: DVC deletes a stage's outputs before it runs, and the uncached ones (metrics, plots) are in no cache."""
    args = command("repro", "--single-item", stage, *(["--force"] if force else []))
    uncached = {path: (workspace / path).read_bytes() for path in layout.stage(stage).uncached if (workspace / path).is_file()}
    try:
        waiting_for_dvc_lock(workspace, lambda: run_logged(args, workspace, stage, logger), logger)
    except DVCLockHeld:  # DVC never started the stage: its outputs are untouched
        raise
    except StageFailed as err:
        raise StageFailed(f"{err}\n{restore_outputs(workspace, stage, uncached)}") from None


def untracked_raw_files(workspace: Path) -> list[str]:
    """Files in RAW_DIR that git does not track and DVC should (`dvc add`), relative to the workspace."""
    raw = workspace / layout.RAW_DIR
    if not raw.is_dir():  # DVC itself then stops at the ingest stage's missing dep, naming it
        return []
    files = [p for p in sorted(raw.iterdir()) if p.is_file() and not p.name.startswith(".") and p.suffix != ".dvc"]
    relative = [str(p.relative_to(workspace)) for p in files]
    return [path for path in relative if not git(workspace, "ls-files", path)]


def add(workspace: Path, paths: list[str], logger: Logger = log) -> None:
    waiting_for_dvc_lock(workspace, lambda: run_logged(command("add", *paths), workspace, "dvc add", logger), logger)


def push(workspace: Path, logger: Logger = log) -> None:
    """Push to DVC's default remote (.dvc/config; `dvc remote modify --local` points a checkout elsewhere)."""
    try:
        waiting_for_dvc_lock(workspace, lambda: run_logged(command("push"), workspace, "dvc push", logger), logger)
    except StageFailed as err:
        raise StageFailed(f"{err}\n(the DVC remote is configured in .dvc/config: `dvc remote list` shows it)") from None
