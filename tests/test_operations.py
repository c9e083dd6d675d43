"""Unattended operation against real servers on 127.0.0.1: a Prefect server running a scheduled
deployment twice (the second run trains and registers nothing), and `mlflow models serve`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from support import BIN, REPO, TINY_PARAMS, clean_env, free_port, make_workspace, start, stop, wait_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real `prefect server` on loopback, `s2s schedule` serving the deployment, two triggered runs."""
    tmp = tmp_path_factory.mktemp("ops")
    ws = make_workspace(tmp / "ws", TINY_PARAMS)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = clean_env(
        PREFECT_HOME=str(tmp / "prefect"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
    )
    server = start(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp / "server.log", tmp
    )
    runner = None
    try:
        wait_http(f"{api}/health", 120, server, tmp / "server.log")
        runner = start(
            [str(BIN / "s2s"), "schedule", "--cron", "0 3 * * *", "--workspace", str(ws)], env, tmp / "runner.log", REPO
        )
        trigger = (
            "import asyncio, json, sys\n"
            "from prefect.deployments import run_deployment\n"
            "from prefect.client.orchestration import get_client\n"
            "async def main():\n"
            "    async with get_client() as client:\n"
            "        for _ in range(120):\n"
            "            try:\n"
            "                d = await client.read_deployment_by_name('s2s-pipeline/s2s-retrain'); break\n"
            "            except Exception:\n"
            "                await asyncio.sleep(1)\n"
            "        schedules = [s.schedule.cron for s in d.schedules]\n"
            "    runs = []\n"
            "    for _ in range(2):\n"
            "        fr = await run_deployment('s2s-pipeline/s2s-retrain', timeout=600, poll_interval=2)\n"
            "        runs.append(fr.state.type.value)\n"
            "    print(json.dumps({'schedules': schedules, 'runs': runs}))\n"
            "asyncio.run(main())\n"
        )
        out = subprocess.run([sys.executable, "-c", trigger], env=env, capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:] + (tmp / "runner.log").read_text()[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        yield {"ws": ws, "result": result, "runner_log": (tmp / "runner.log").read_text(), "tmp": tmp}
    finally:
        if runner is not None:
            stop(runner)
        stop(server)


def test_scheduled_deployment_runs_and_an_unchanged_second_run_does_nothing(scheduled: dict[str, Any]) -> None:
    from mlflow import MlflowClient

    assert scheduled["result"]["schedules"] == ["0 3 * * *"]
    assert scheduled["result"]["runs"] == ["COMPLETED", "COMPLETED"]
    log = scheduled["runner_log"]
    # The first run trained; the second found every DVC stage unchanged and registered nothing.
    assert log.count("Running stage 'train'") == 1
    assert log.count("Stage 'train' didn't change, skipping") == 1
    assert "already registered s2s-builtin-en-de version 1" in log
    uri = f"sqlite:///{scheduled['ws'] / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    assert [str(v.version) for v in client.search_model_versions("name = 's2s-builtin-en-de'")] == ["1"]
    assert str(client.get_model_version_by_alias("s2s-builtin-en-de", "champion").version) == "1"


def test_mlflow_models_serve_answers_invocations(scheduled: dict[str, Any]) -> None:
    ws, tmp = scheduled["ws"], scheduled["tmp"]
    port = free_port()
    db = f"sqlite:///{ws / 'mlflow.db'}"
    env = clean_env(MLFLOW_TRACKING_URI=db, MLFLOW_REGISTRY_URI=db)
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/s2s-builtin-en-de@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    server = start(cmd, env, tmp / "serve.log", tmp)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 120, server, tmp / "serve.log")
        sources = ["We saw a big dog yesterday.", "They sold the old book."]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": sources}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        stop(server)
    script = (
        "import json, mlflow.pyfunc\n"
        f"mlflow.set_registry_uri('sqlite:///{ws / 'mlflow.db'}')\n"
        f"print(json.dumps(list(mlflow.pyfunc.load_model('models:/s2s-builtin-en-de@champion').predict({sources!r}))))\n"
    )
    local = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp)
    assert served == json.loads(local.stdout.strip().splitlines()[-1])
    assert len(served) == 2 and all(isinstance(s, str) and s for s in served)
