"""The team stack on loopback, for real: PostgreSQL, an S3 server (moto), `mlflow server`, `prefect server`, a worker.

Each check looks at the servers themselves: rows in PostgreSQL, objects in the bucket, the Prefect API.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from optuna.trial import TrialState
from support import TINY_PARAMS, deep_merge, make_workspace

from ops import stack as team
from s2s import layout

pytestmark = [pytest.mark.team, pytest.mark.slow]
BIN = Path(sys.executable).parent
NAME = "s2s-builtin-en-de"


def env_for(stack: team.Stack) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    return {**base, **stack.env(), "PATH": f"{BIN}{os.pathsep}{base['PATH']}", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def sh(
    args: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def sql(stack: team.Stack, database: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    url = f"postgresql://{stack.db_user}:{stack.db_password}@127.0.0.1:{stack.ports['postgres']}/{database}"
    with psycopg.connect(url) as conn:
        return list(conn.execute(query).fetchall())


def bucket_keys(stack: team.Stack, prefix: str) -> list[str]:
    pages = team.s3_client(stack).get_paginator("list_objects_v2").paginate(Bucket=team.BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def deployed() -> Iterator[dict[str, Any]]:
    """The stack up, a workspace deployed with prefect.yaml, and one deployment run picked up by the worker."""
    if shutil.which("initdb") is None:
        pytest.fail("PostgreSQL's initdb is not on PATH: the team tests need Debian's postgresql package")
    # Not under pytest's tmp folder: that one is private to root, and PostgreSQL runs as `postgres`.
    tmp = Path(tempfile.mkdtemp(prefix="s2s-team-"))
    tmp.chmod(0o755)
    ws = make_workspace(tmp / "ws", TINY_PARAMS, local_registry=False)
    # The API is what the tests use; building the UI only costs start-up time.
    cli_env = {**os.environ, "PREFECT_UI_ENABLED": "false", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    stack_cmd = [str(BIN / "s2s"), "stack", "--dir", str(tmp / "stack"), "--workspace", str(ws)]
    start = time.perf_counter()
    try:
        first = sh([*stack_cmd[:2], "up", *stack_cmd[2:]], ws, cli_env)
        started = time.perf_counter() - start
        again = sh([*stack_cmd[:2], "up", *stack_cmd[2:]], ws, cli_env)  # idempotent: nothing new, the same variables
        stack = team.Stack.load_or_create(tmp / "stack")
        exported = dict(line.removeprefix("export ").split("=", 1) for line in first.stdout.splitlines())
        env = env_for(stack)
        sh([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], ws, env)
        run = sh([str(BIN / "prefect"), "deployment", "run", "s2s-pipeline/s2s-retrain", "--watch"], ws, env)
        # What that run left, taken now: the tests below may run in any order, and some add versions.
        after_run = {
            "versions": sql(stack, "mlflow", "SELECT name, version FROM model_versions"),
            "aliases": dict(sql(stack, "mlflow", "SELECT alias, version FROM registered_model_aliases")),
            "model_md5": next(o["md5"] for o in yaml.safe_load((ws / layout.LOCK_FILE).read_text())["stages"]["train"]["outs"]),
        }
        yield {"stack": stack, "ws": ws, "tmp": tmp, "env": env, "run": run, "startup_seconds": started,
               "exported": exported, "again": again.stdout, "first": first.stdout, "after_run": after_run}  # fmt: skip
    finally:
        sh([*stack_cmd[:2], "down", *stack_cmd[2:]], tmp, cli_env, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def test_a_deployment_run_by_the_worker_lands_in_postgres_and_the_bucket(deployed: dict[str, Any]) -> None:
    stack, ws = deployed["stack"], deployed["ws"]
    print(f"stack start-up {deployed['startup_seconds']:.1f} s")
    assert deployed["exported"] == stack.env() and deployed["again"] == deployed["first"]
    assert stack.db_password not in (ws / layout.PARAMS_FILE).read_text()  # credentials stay in the stack folder
    assert "Flow run finished successfully in 'Completed'" in deployed["run"].stdout
    # Prefect's own record, in its PostgreSQL database: the run, picked up by a worker of the pool.
    runs = sql(stack, "prefect", "SELECT fr.state_type, wp.name FROM flow_run fr JOIN work_queue wq ON fr.work_queue_id = wq.id "
                                 "JOIN work_pool wp ON wq.work_pool_id = wp.id")  # fmt: skip
    assert runs == [("COMPLETED", team.POOL)]
    assert sql(stack, "prefect", f"SELECT concurrency_limit FROM work_pool WHERE name = '{team.POOL}'") == [(1,)]
    assert {key for (key,) in sql(stack, "prefect", "SELECT key FROM artifact")} >= {"s2s-run-report", "s2s-sample-outputs"}
    # MLflow's registry rows in PostgreSQL; the gate crowned the first version.
    assert deployed["after_run"]["versions"] == [(NAME, 1)]
    assert deployed["after_run"]["aliases"] == {"champion": 1, "challenger": 1}
    # The artifact location the server handed out was used as is: the model's files are objects in the bucket.
    (location,) = sql(stack, "mlflow", "SELECT artifact_location FROM experiments WHERE name = 's2s'")[0]
    assert location.startswith("mlflow-artifacts:")
    keys = bucket_keys(stack, "mlartifacts/")
    assert any(k.endswith("/artifacts/MLmodel") for k in keys) and any(k.endswith("/model.pt") for k in keys)
    assert any(k.endswith("/lineage/dvc.lock") for k in keys)
    # `dvc push` put data and artifacts in the bucket: every cached file of this run is an object there.
    model_md5 = deployed["after_run"]["model_md5"]
    assert f"dvc/files/md5/{model_md5[:2]}/{model_md5[2:]}" in bucket_keys(stack, "dvc/")


def test_a_second_clone_pulls_from_the_bucket_and_has_nothing_to_run(deployed: dict[str, Any]) -> None:
    stack, ws, tmp, env = deployed["stack"], deployed["ws"], deployed["tmp"], deployed["env"]
    git = ["git", "-c", "user.name=s2s", "-c", "user.email=s2s@example.invalid"]
    sh([*git, "add", "-A"], ws, env)
    sh([*git, "commit", "-q", "-m", "run"], ws, env)
    clone = tmp / "clone"
    sh(["git", "clone", "-q", str(ws), str(clone)], tmp, env)
    team.use_bucket_remote(stack, clone)
    shutil.rmtree(ws / ".dvc" / "cache", ignore_errors=True)  # nothing local to borrow: the bucket is the only source
    sh([sys.executable, "-m", "dvc", "pull"], clone, env)
    assert json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], clone, env).stdout) == {}
    assert "Running stage" not in sh([sys.executable, "-m", "dvc", "repro"], clone, env).stdout


def test_mlflow_models_serve_loads_the_champion_from_the_server(deployed: dict[str, Any]) -> None:
    tmp, env = deployed["tmp"], deployed["env"]
    port = team.free_port()
    log = tmp / "serve.log"
    args = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with log.open("wb") as handle:
        proc = subprocess.Popen(args, cwd=tmp, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        team.wait_until("mlflow models serve", lambda: team.answers(f"http://127.0.0.1:{port}/ping"), 120, log)
        body = json.dumps({"inputs": ["We saw a big dog yesterday.", "They sold the old book."]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    script = (
        "import json, mlflow.pyfunc\n"
        f"print(json.dumps(list(mlflow.pyfunc.load_model('models:/{NAME}@champion').predict("
        "['We saw a big dog yesterday.', 'They sold the old book.']))))\n"
    )
    expected = json.loads(sh([sys.executable, "-c", script], tmp, env).stdout.strip().splitlines()[-1])
    assert served == expected and all(isinstance(t, str) and t for t in served)


def _s2s_run(deployed: dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh([str(BIN / "s2s"), "run", "--workspace", str(deployed["ws"])], deployed["ws"], deployed["env"], check=check)


def _lr(ws: Path) -> float:
    return float(yaml.safe_load((ws / layout.PARAMS_FILE).read_text())["train"]["lr"])


def _set_lr(ws: Path, lr: float) -> None:
    params = yaml.safe_load((ws / layout.PARAMS_FILE).read_text())
    (ws / layout.PARAMS_FILE).write_text(yaml.safe_dump(deep_merge(params, {"train": {"lr": lr}}), sort_keys=False))


def test_mlflow_server_stopped_mid_run_fails_clearly_and_the_rerun_registers_without_training(deployed: dict[str, Any]) -> None:
    stack, ws, env = deployed["stack"], deployed["ws"], deployed["env"]
    before = sql(stack, "mlflow", "SELECT version FROM model_versions ORDER BY version")
    _set_lr(ws, 0.004 if _lr(ws) != 0.004 else 0.005)  # a change whichever tests ran first: this run trains
    log = deployed["tmp"] / "midrun.log"
    with log.open("w") as handle:
        proc = subprocess.Popen([str(BIN / "s2s"), "run", "--workspace", str(ws)], cwd=ws, env=env, stdout=handle,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
    team.wait_until("training to start", lambda: "Running stage 'train'" in log.read_text(), 300, log)
    team.stop_service(stack, "mlflow")  # the tracking server goes away while the model trains
    assert proc.wait(600) == 1
    out = log.read_text()
    assert f"MLflow registry at {stack.mlflow_uri} failed" in out and "kept in the DVC cache" in out
    # The trained model is in the DVC cache and, pushed before registering, in the bucket.
    model_md5 = next(o["md5"] for o in yaml.safe_load((ws / layout.LOCK_FILE).read_text())["stages"]["train"]["outs"])
    assert f"dvc/files/md5/{model_md5[:2]}/{model_md5[2:]}" in bucket_keys(stack, "dvc/")
    assert sql(stack, "mlflow", "SELECT version FROM model_versions ORDER BY version") == before  # none without artifacts

    team.up(stack.root, ws)  # the server is back
    rerun = _s2s_run(deployed)
    assert "stages      : ingest skipped, tokenizer skipped, encode skipped, train skipped, evaluate skipped" in rerun.stdout
    new = before[-1][0] + 1
    assert f"models:/{NAME}/{new}  (new version)" in rerun.stdout
    versions = sql(stack, "mlflow", "SELECT version, source FROM model_versions ORDER BY version")
    assert [v for v, _ in versions] == [*(v for (v,) in before), new]
    for _, source in versions:  # every version's model files are objects in the bucket
        model_id = source.rsplit("/", 1)[-1]
        assert any(k.endswith(f"/models/{model_id}/artifacts/MLmodel") for k in bucket_keys(stack, "mlartifacts/"))


def test_postgres_restarted_between_two_runs_the_next_run_works(deployed: dict[str, Any]) -> None:
    stack = deployed["stack"]
    _s2s_run(deployed)  # whatever ran before: registered now, so the run after the restart has nothing new
    versions = sql(stack, "mlflow", "SELECT count(*) FROM model_versions")
    team.stop_postgres(stack)
    assert not team.postgres_ready(stack)
    team.up(stack.root, deployed["ws"])  # PostgreSQL back on its port; MLflow and Prefect reconnect by themselves
    rerun = _s2s_run(deployed)
    assert "unchanged, not registered again" in rerun.stdout
    assert sql(stack, "mlflow", "SELECT count(*) FROM model_versions") == versions


def test_promote_and_rollback_against_the_server(deployed: dict[str, Any]) -> None:
    stack, ws, env = deployed["stack"], deployed["ws"], deployed["env"]
    champion = dict(sql(stack, "mlflow", "SELECT alias, version FROM registered_model_aliases"))["champion"]
    other = 2 if champion == 1 else 1
    sh([str(BIN / "s2s"), "promote", str(other), "--workspace", str(ws), "--reason", "team test"], ws, env)
    assert dict(sql(stack, "mlflow", "SELECT alias, version FROM registered_model_aliases"))["champion"] == other
    sh([str(BIN / "s2s"), "rollback", "--workspace", str(ws)], ws, env)
    assert dict(sql(stack, "mlflow", "SELECT alias, version FROM registered_model_aliases"))["champion"] == champion


def _sweep_flow_runs(stack: team.Stack) -> list[tuple[str]]:
    """The states of the flow runs of the sweep-trial deployment, sorted."""
    return sorted(sql(stack, "prefect", "SELECT fr.state_type FROM flow_run fr JOIN deployment d "
                                        "ON fr.deployment_id = d.id WHERE d.name = 's2s-sweep-trial'"))  # fmt: skip


def test_two_sweep_workers_share_one_study_in_postgres_and_no_trial_runs_twice(deployed: dict[str, Any]) -> None:
    """`s2s sweep --submit` queues four trials in the stack's PostgreSQL and makes one flow run each; two workers on
    the sweep pool run them two at a time, each flow run taking a different queued trial."""
    import optuna

    stack, ws, env, tmp = deployed["stack"], deployed["ws"], deployed["env"], deployed["tmp"]
    space = tmp / "team-sweep.yaml"
    space.write_text(yaml.safe_dump({"trials": 4, "baseline": False, "fixed": {"train.epochs": 1}, "pruner": {"kind": "none"},
                                     "space": {"train.lr": {"low": 0.005, "high": 0.05, "log": True}}}))  # fmt: skip
    submitted = sh([str(BIN / "s2s"), "sweep", str(space), "--workspace", str(ws), "--submit", "s2s-sweep-trial"], ws, env)
    assert "4 flow run(s) of s2s-sweep-trial/s2s-sweep-trial submitted" in submitted.stdout
    study = optuna.load_study(study_name="team-sweep", storage=stack.database_url("optuna"))
    logs = [tmp / f"sweeper-{k}.log" for k in (1, 2)]
    workers = []
    for log in logs:
        with log.open("wb") as handle:
            workers.append(subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", team.SWEEP_POOL, "--limit", "1", "--name", log.stem],
                cwd=ws, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip
    try:
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        team.wait_until("four finished trials", lambda: len(study.get_trials(states=finished)) == 4, 600, logs[0])
        # A flow run reports COMPLETED to Prefect a moment after its trial is told to Optuna.
        team.wait_until("four finished flow runs", lambda: _sweep_flow_runs(stack) == [("COMPLETED",)] * 4, 60, logs[0])
    finally:
        for proc in workers:
            os.killpg(proc.pid, 15)
            proc.wait(60)
    trials = study.get_trials()
    assert [(t.number, t.state) for t in trials] == [(k, TrialState.COMPLETE) for k in range(4)]
    assert len({t.params["train.lr"] for t in trials}) == 4
    # Each trial once: one MLflow run and one workspace per trial number, four flow runs, both workers busy.
    trial_runs = sql(stack, "mlflow", "SELECT t.value FROM tags t JOIN tags r ON t.run_uuid = r.run_uuid "
                     "WHERE t.key = 's2s.sweep.trial' AND r.key = 's2s.sweep' AND r.value = 'team-sweep'")  # fmt: skip
    assert sorted(int(v) for (v,) in trial_runs) == [0, 1, 2, 3]
    assert sorted(p.name for p in (ws / ".cache" / "sweeps" / "team-sweep").glob("trial-*")) == [f"trial-00{k}" for k in range(4)]
    assert _sweep_flow_runs(stack) == [("COMPLETED",)] * 4
    # Both workers ran trials, and the trials each ran are disjoint: four in all.
    ran = [re.findall(r"trial (\d+) complete: valid", log.read_text(errors="replace")) for log in logs]
    assert all(ran) and sorted(int(n) for n in ran[0] + ran[1]) == [0, 1, 2, 3], ran
    assert "team-sweep" in {key for (key,) in sql(stack, "optuna", "SELECT study_name FROM studies")}


def test_object_store_unreachable_at_push_fails_clearly_and_keeps_local_state(deployed: dict[str, Any]) -> None:
    stack, ws = deployed["stack"], deployed["ws"]
    lock_before = (ws / layout.LOCK_FILE).read_bytes()
    team.stop_service(stack, "s3")
    try:
        failed = _s2s_run(deployed, check=False)
    finally:
        team.up(stack.root, ws)  # the bucket back for the tests that run after this one
    assert failed.returncode == 1
    assert "dvc push failed" in failed.stderr + failed.stdout
    assert "the DVC remote is configured in .dvc/config" in failed.stderr + failed.stdout
    assert (ws / layout.LOCK_FILE).read_bytes() == lock_before
    status = sh([sys.executable, "-m", "dvc", "status", "--json"], ws, deployed["env"])
    assert json.loads(status.stdout) == {}  # data, tokenizer and model still match dvc.lock locally
