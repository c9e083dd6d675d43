"""The README's commands, run as written: every shell block of its quick start, own-data, serving and export sections.

Each runs in a fresh copy of this checkout (its tracked and untracked, not ignored, files: what a clone has, with
the changes not yet committed), with this environment as its `.venv` (`make setup` done) and nothing activated:
the blocks are bash scripts run from the copy's root. The test chooses only what a block cannot: the data of the
own-data example (Multi30k's files in `data/raw/`, as the example's names), a temporary Prefect home, a stop of
`s2s run --preset transformer-cpu` once its training has begun (its 22 minutes are BENCHMARKS.md's), and, for the
export section, a workspace whose champion is a Transformer (the section is about one).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from support import MULTI30K, REPO, TINY_PARAMS, TINY_TRANSFORMER, deep_merge

from s2s.layout import PARAMS_FILE
from s2s.workspace import GIT, run

pytestmark = pytest.mark.slow

README = REPO / "README.md"
VENV = Path(sys.executable).parent.parent
SECTIONS = ("Quick start", "Serving", "Your own data", "Serving at speed: CTranslate2")
PRESET_RUN = ".venv/bin/s2s run --preset transformer-cpu"


def sections() -> dict[str, str]:
    """The README's `## ` sections by title."""
    parts = re.split(r"^## (.+)$", README.read_text(encoding="utf-8"), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def blocks(section: str, language: str = "bash") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", sections()[section], re.S)


def fresh_copy(dest: Path) -> Path:
    """What `git clone` + `make setup` gives, with this checkout's uncommitted changes: git's files, `.venv`."""
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], REPO).stdout.split("\0")
    stamp = VENV / ".installed"
    assert stamp.is_file(), f"{stamp} missing: run `make setup` first (the Makefile would otherwise set up again)"
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for name in ("pyproject.toml", "requirements.lock", "scripts/setup.sh"):  # older than the set-up, as after a clone
        os.utime(dest / name, (stamp.stat().st_mtime - 60,) * 2)
    (dest / ".venv").symlink_to(VENV)
    run(["git", "init", "-q"], dest)
    run([*GIT, "add", "-A"], dest)
    run([*GIT, "commit", "-q", "-m", "clone"], dest)
    return dest


def environment(tmp_path: Path) -> dict[str, str]:
    """A user's shell: nothing activated, no MLflow or Prefect server configured, Prefect's home in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "VIRTUAL_ENV"))}
    venv_bin = str(VENV / "bin")
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p != venv_bin)
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def run_block(block: str, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """The block as a bash script (`set -e`); servers it starts with `&` are stopped when it ends.

    Its output goes to a file: a server in the background keeps a pipe open after the script has ended.
    """
    log = cwd.parent / f"block-{time.monotonic_ns()}.log"
    with log.open("w") as handle:
        proc = subprocess.Popen(["bash", "-e", "-c", block], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=timeout)
        finally:
            with_servers_stopped(proc)
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, f"README block failed ({proc.returncode}):\n{block}\n---\n{out[-4000:]}"
    return out


def with_servers_stopped(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the block's background jobs share its process group
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def predictions(out: str) -> list[object]:
    """The last answer `curl` printed (without a newline of its own: the server's log may follow on its line)."""
    start = out.rfind('{"predictions"')
    assert start >= 0, out[-3000:]
    answer, _ = json.JSONDecoder().raw_decode(out[start:])
    return answer["predictions"]  # type: ignore[no-any-return]


def own_data(ws: Path, example: dict[str, object]) -> None:
    """Multi30k's files as a user's own, under the example's names: 4,000 training pairs, 300 each to validate, test."""
    files = example["ingest"]["files"]  # type: ignore[index]
    names = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    for split, size in (("train", 4000), ("valid", 300), ("test", 300)):
        for side, lang in (("src", "en"), ("tgt", "de")):
            with gzip.open(MULTI30K / f"{names[split]}.{lang}.gz", "rt", encoding="utf-8") as handle:
                lines = handle.read().splitlines()[:size]
            (ws / files[split][side]).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_the_sections_hold_the_blocks_this_test_runs() -> None:
    found = {title: len(blocks(title)) for title in SECTIONS}
    assert found == {"Quick start": 1, "Serving": 1, "Your own data": 2, "Serving at speed: CTranslate2": 1}
    assert len(blocks("Your own data", "yaml")) == 1
    assert PRESET_RUN in blocks("Your own data")[1]


def test_quick_start_serving_and_own_data_blocks_run_as_written(tmp_path: Path) -> None:
    if not (MULTI30K / "train.en.gz").is_file():
        pytest.fail(f"Multi30k is missing at {MULTI30K}: CI is promised ../shared/data")
    ws, env = fresh_copy(tmp_path / "s2s"), environment(tmp_path)

    [quick] = blocks("Quick start")
    out = run_block(quick, ws, env, timeout=900)
    summary = out[out.index("s2s pipeline finished") :]
    print(summary)  # the README's example output comes from here
    assert "model       : models:/s2s-builtin-en-de/1  (new version)" in summary
    assert "gate        : promoted: first version: no champion yet" in summary

    [serving] = blocks("Serving")
    served = predictions(run_block(serving, ws, env, timeout=300))
    assert len(served) == 1 and isinstance(served[0], str) and served[0]

    [example] = blocks("Your own data", "yaml")
    params = yaml.safe_load((ws / PARAMS_FILE).read_text())
    own = yaml.safe_load(example)
    (ws / PARAMS_FILE).write_text(yaml.safe_dump({**params, **own}, sort_keys=False))  # its ingest replaces ours
    own_data(ws, own)
    first, presets = blocks("Your own data")
    out = run_block(first, ws, env, timeout=900)
    assert "model       : models:/s2s-news-en-de/1  (new version)" in out, out[-3000:]
    assert "gate        : promoted" in out

    listing, run_line = presets.split(PRESET_RUN)
    assert "transformer-cpu *" in run_block(listing, ws, env, timeout=120)
    proc = subprocess.Popen(["bash", "-c", PRESET_RUN + run_line.split("\n")[0]], cwd=ws, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    watchdog = threading.Timer(600, os.killpg, (proc.pid, signal.SIGKILL))  # a run that stalls without a line
    watchdog.start()
    try:
        for line in proc.stdout:  # until its training has begun: a progress line of epoch 1
            lines.append(line)
            if re.search(r"train \| .* epoch 1/100 +step \d+/\d+", line):
                break
        assert proc.poll() is None, "".join(lines[-40:])
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        rest, _ = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out[-3000:]
    assert "value(s) changed" in out and "model.arch: 'rnn' -> 'transformer'" in out
    stop = [line for line in out.splitlines() if "run again" in line]
    assert len(stop) == 1 and stop[0] in out.rstrip().splitlines()[-2:], stop  # said once, at the end (then Prefect's own)
    assert re.fullmatch(
        r"s2s: SIGINT: stopped at epoch 1, step \d+; run again to resume with `s2s run` "
        r"\(params.yaml holds the preset's values now: give no --preset\)",
        stop[0],
    )


def test_export_section_blocks_run_as_written_on_a_transformer_champion(tmp_path: Path) -> None:
    ws, env = fresh_copy(tmp_path / "s2s"), environment(tmp_path)
    tiny = deep_merge(deep_merge(TINY_PARAMS, TINY_TRANSFORMER), {"remote": {"push": False}})
    params = deep_merge(yaml.safe_load((ws / PARAMS_FILE).read_text()), tiny)
    (ws / PARAMS_FILE).write_text(yaml.safe_dump(params, sort_keys=False))
    trained = run_block(".venv/bin/s2s run", ws, env, timeout=900)
    assert "gate        : promoted" in trained, trained[-3000:]

    [export] = blocks("Serving at speed: CTranslate2")
    out = run_block(export, ws, env, timeout=300)
    assert "registered as s2s-builtin-en-de v2, alias champion-int8; serve it with " in out, out[-3000:]
    [nbest] = predictions(out)
    assert isinstance(nbest, list) and len(nbest) == 2 and all(isinstance(t, str) for t in nbest)
