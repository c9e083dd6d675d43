"""Take the README's dashboard screenshots from a real run (needs Debian's `chromium`).

    .venv/bin/python docs/screenshots.py

Starts a Prefect server and (later) the MLflow UI on 127.0.0.1, runs the
pipeline twice in a scratch workspace (the second time with a changed learning
rate, so the promotion gate has a champion to compare with), then has headless
Chromium photograph the Prefect flow run's report and the MLflow model version.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.layout import PARAMS_FILE  # noqa: E402
from s2s.workspace import deep_merge, make_workspace, write_params  # noqa: E402

BIN = Path(sys.executable).parent
DEMO = {"ingest": {"builtin": {"pairs": 8000}, "holdout": {"valid": 500, "test": 500}}, "train": {"epochs": 2}}


def wait(url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(url)


def shoot(url: str, out: Path, size: str = "1440,1000") -> None:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={tempfile.mkdtemp()}", f"--window-size={size}", "--virtual-time-budget=20000",
            f"--screenshot={out}", url]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    print(f"wrote {out}")


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="s2s-shots-"))
    base = yaml.safe_load((REPO / PARAMS_FILE).read_text())
    ws = make_workspace(tmp / "ws", deep_merge(base, DEMO))
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_API_URL": "http://127.0.0.1:4200/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    procs = [subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", "4200"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]  # fmt: skip
    try:
        wait("http://127.0.0.1:4200/api/health")
        subprocess.run([str(BIN / "s2s"), "run", "--workspace", str(ws)], env=env, check=True)
        params = yaml.safe_load((ws / PARAMS_FILE).read_text())
        write_params(ws, deep_merge(params, {"train": {"lr": 0.002}}))
        subprocess.run([str(BIN / "s2s"), "run", "--workspace", str(ws)], env=env, check=True)
        query = json.dumps({"sort": "START_TIME_DESC", "limit": 1}).encode()
        request = urllib.request.Request(
            "http://127.0.0.1:4200/api/flow_runs/filter", data=query, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as response:
            run_id = json.loads(response.read())[0]["id"]
        procs.append(subprocess.Popen([str(BIN / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{ws / 'mlflow.db'}",
                                       "-h", "127.0.0.1", "-p", "5000"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))  # fmt: skip
        wait("http://127.0.0.1:5000/health")
        out = REPO / "docs"
        query = json.dumps({"limit": 1, "artifacts": {"key": {"any_": ["s2s-run-report"]}}, "sort": "CREATED_DESC"}).encode()
        request = urllib.request.Request(
            "http://127.0.0.1:4200/api/artifacts/filter", data=query, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request) as response:
            report = json.loads(response.read())[0]["id"]
        shoot(f"http://127.0.0.1:4200/runs/flow-run/{run_id}", out / "prefect-run.png")
        shoot(f"http://127.0.0.1:4200/artifacts/artifact/{report}", out / "prefect-report.png")
        shoot("http://127.0.0.1:5000/#/models/s2s-builtin-en-de/versions/2", out / "mlflow-model-version.png")
        with urllib.request.urlopen(
            "http://127.0.0.1:5000/api/2.0/mlflow/registered-models/get-latest-versions?name=s2s-builtin-en-de"
        ) as r:
            run = json.loads(r.read())["model_versions"][-1]["run_id"]
        with urllib.request.urlopen("http://127.0.0.1:5000/api/2.0/mlflow/experiments/get-by-name?experiment_name=s2s") as r:
            exp = json.loads(r.read())["experiment"]["experiment_id"]
        shoot(f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run}", out / "mlflow-run.png", size="1440,1300")
    finally:
        for proc in procs:
            os.killpg(proc.pid, 15)
    print(f"workspace kept in {ws}")


if __name__ == "__main__":
    main()
