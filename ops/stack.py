"""The team stack on 127.0.0.1, for trying it and for tests: `s2s stack up | env | down`.

PostgreSQL (Debian's binaries) holds MLflow's and Prefect's state; an
S3-compatible server (moto) holds MLflow's artifacts and the DVC remote;
`mlflow server` proxies artifacts to the bucket; `prefect server` and one
`prefect worker` on a process work pool run deployments. Everything lives in
one git-ignored folder (default `.stack/`): data, logs, pids, and the
credentials generated on first start (none is ever committed). `up` is
idempotent: it starts only what is not answering, on the ports and with the
credentials chosen the first time, so the printed environment stays valid.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from s2s import dvc
from s2s.layout import SWEEP_STORAGE_ENV

STATE_DIR = ".stack"
POOL = "s2s"  # the Prefect work pool the deployment runs on
SWEEP_POOL = "s2s-sweeps"  # sweep trials: each in its own workspace, so as many at once as there are workers
BUCKET = "s2s"  # MLflow artifacts under mlartifacts/, the DVC remote under dvc/
DATABASES = ("mlflow", "prefect", "optuna")
SERVICES = ("postgres", "s3", "mlflow", "prefect", "worker")
BIN = dvc.BIN


class StackError(RuntimeError):
    """A service that would not start; the message names its log."""


@dataclass(frozen=True)
class Stack:
    root: Path
    ports: dict[str, int]
    db_user: str
    db_password: str
    aws_key: str
    aws_secret: str

    @property
    def mlflow_uri(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"

    @property
    def prefect_api(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    def database_url(self, name: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.db_user}:{self.db_password}@127.0.0.1:{self.ports['postgres']}/{name}"

    @property
    def dvc_remote(self) -> str:
        return f"s3://{BUCKET}/dvc"

    def env(self) -> dict[str, str]:
        """What a client exports to use the stack: MLflow's, Prefect's and AWS's standard variables."""
        return {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "PREFECT_API_URL": self.prefect_api,
            "AWS_ACCESS_KEY_ID": self.aws_key,
            "AWS_SECRET_ACCESS_KEY": self.aws_secret,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.s3_endpoint,  # boto3, s3fs and DVC's S3 remote read this
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            SWEEP_STORAGE_ENV: self.database_url("optuna"),
        }

    def save(self) -> None:
        path = self.root / "stack.json"
        path.write_text(json.dumps({**asdict(self), "root": str(self.root)}, indent=2) + "\n")
        path.chmod(0o600)  # it holds the generated credentials

    @classmethod
    def load_or_create(cls, root: Path) -> Stack:
        path = root / "stack.json"
        if path.is_file():
            data = json.loads(path.read_text())
            return cls(**{**data, "root": root})
        root.mkdir(parents=True, exist_ok=True)
        stack = cls(
            root=root,
            ports={name: free_port() for name in ("postgres", "s3", "mlflow", "prefect")},
            db_user="s2s",
            db_password=secrets.token_urlsafe(18),
            aws_key="AKIA" + secrets.token_hex(8).upper(),
            aws_secret=secrets.token_urlsafe(30),
        )
        stack.save()
        return stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status < 500)
    except OSError:
        return False


def wait_until(what: str, check: Callable[[], bool], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-2000:] if log.is_file() else "(no log)"
    raise StackError(f"{what} did not come up in {seconds:.0f} s; its log is {log}:\n{tail}")


# ------------------------------------------------------------------------------ processes


def _pid_file(stack: Stack, name: str) -> Path:
    return stack.root / "run" / f"{name}.pid"


def service_alive(stack: Stack, name: str) -> bool:
    path = _pid_file(stack, name)
    if not path.is_file():
        return False
    try:
        os.kill(int(path.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def _spawn(stack: Stack, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
    (stack.root / "logs").mkdir(parents=True, exist_ok=True)
    _pid_file(stack, name).parent.mkdir(parents=True, exist_ok=True)
    log = (stack.root / "logs" / f"{name}.log").open("ab")
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _pid_file(stack, name).write_text(str(proc.pid))


def stop_service(stack: Stack, name: str, seconds: float = 20) -> None:
    path = _pid_file(stack, name)
    if not path.is_file():
        return
    pid = int(path.read_text())
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, 5)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and service_alive(stack, name):
            time.sleep(0.2)
        if not service_alive(stack, name):
            break
    path.unlink(missing_ok=True)


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API_"))}
    return dvc.env(env)


# ------------------------------------------------------------------------------ PostgreSQL


def _as_postgres(args: list[str]) -> list[str]:
    """Debian's PostgreSQL refuses to run as root; as root, run its programs as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def _pg_dirs(stack: Stack) -> tuple[Path, Path, Path]:
    return stack.root / "pg" / "data", stack.root / "pg" / "run", stack.root / "logs" / "postgres.log"


def postgres_ready(stack: Stack) -> bool:
    import psycopg

    try:
        url = f"postgresql://{stack.db_user}:{stack.db_password}@127.0.0.1:{stack.ports['postgres']}/postgres"
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def start_postgres(stack: Stack) -> None:
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        raise StackError("PostgreSQL's initdb/pg_ctl are not on PATH (Debian: apt-get install postgresql)")
    data, run, log = _pg_dirs(stack)
    log.parent.mkdir(parents=True, exist_ok=True)
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        pwfile = stack.root / "pg" / "pwfile"
        pwfile.write_text(stack.db_password + "\n")
        if os.geteuid() == 0:
            for path in (stack.root, stack.root / "pg"):
                path.chmod(0o755)  # postgres must be able to reach its data folder
            subprocess.run(["chown", "-R", "postgres:postgres", str(stack.root / "pg")], check=True)
            log.touch()
            subprocess.run(["chown", "postgres:postgres", str(log), str(log.parent)], check=True)
        initdb = ["initdb", "-D", str(data), "-U", stack.db_user, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"]  # fmt: skip
        subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
        pwfile.unlink()
    options = f"-p {stack.ports['postgres']} -k {run} -c listen_addresses=127.0.0.1"
    subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options, "start"]),
                   check=True, capture_output=True)  # fmt: skip
    wait_until("PostgreSQL", lambda: postgres_ready(stack), 60, log)


def stop_postgres(stack: Stack) -> None:
    data, _, _ = _pg_dirs(stack)
    if (data / "postmaster.pid").is_file():
        subprocess.run(_as_postgres(["pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True)


def create_databases(stack: Stack) -> None:
    """MLflow's and Prefect's databases; Prefect's server needs the pg_trgm extension."""
    import psycopg

    base = f"postgresql://{stack.db_user}:{stack.db_password}@127.0.0.1:{stack.ports['postgres']}"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in DATABASES:
            if name not in existing:
                conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(f"{base}/prefect", autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")


# --------------------------------------------------------------------------------- the rest


def s3_client(stack: Stack):  # type: ignore[no-untyped-def]  # boto3's client type is generated at run time
    import boto3

    return boto3.client("s3", endpoint_url=stack.s3_endpoint, aws_access_key_id=stack.aws_key,
                        aws_secret_access_key=stack.aws_secret, region_name="us-east-1")  # fmt: skip


def start_s3(stack: Stack) -> None:
    """moto's S3 server; it keeps objects in memory, so a restart empties the bucket (README says so)."""
    _spawn(stack, "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(stack.ports["s3"])], _base_env(), stack.root)
    wait_until("the S3 server (moto)", lambda: answers(f"{stack.s3_endpoint}/moto-api/"), 60, stack.root / "logs" / "s3.log")
    client = s3_client(stack)
    if BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=BUCKET)


def start_mlflow(stack: Stack) -> None:
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", stack.database_url("mlflow"),
            "--artifacts-destination", f"s3://{BUCKET}/mlartifacts", "--serve-artifacts",
            "--host", "127.0.0.1", "--port", str(stack.ports["mlflow"]), "--workers", "1"]  # fmt: skip
    _spawn(stack, "mlflow", args, {**_base_env(), **stack.env()}, stack.root)
    wait_until("mlflow server", lambda: answers(f"{stack.mlflow_uri}/health"), 120, stack.root / "logs" / "mlflow.log")


def _prefect_env(stack: Stack) -> dict[str, str]:
    return {
        **_base_env(),
        **stack.env(),
        "PREFECT_HOME": str(stack.root / "prefect"),
        "PREFECT_API_DATABASE_CONNECTION_URL": stack.database_url("prefect", "asyncpg"),
    }


def start_prefect(stack: Stack) -> None:
    args = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(stack.ports["prefect"])]
    _spawn(stack, "prefect", args, _prefect_env(stack), stack.root)
    wait_until("prefect server", lambda: answers(f"{stack.prefect_api}/health"), 180, stack.root / "logs" / "prefect.log")
    env = _prefect_env(stack)
    prefect = str(BIN / "prefect")
    created = subprocess.run([prefect, "work-pool", "create", POOL, "--type", "process"], env=env, capture_output=True, text=True)
    if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
        raise StackError(f"prefect work-pool create {POOL} failed:\n{created.stdout}{created.stderr}")
    # One run at a time on the pool: two runs never share a workspace (Prefect's limit, not a lock of ours).
    subprocess.run([prefect, "work-pool", "set-concurrency-limit", POOL, "1"], env=env, check=True, capture_output=True)
    # Sweep trials have a workspace each: no pool limit; each worker takes one at a time (`--limit 1`).
    created = subprocess.run([prefect, "work-pool", "create", SWEEP_POOL, "--type", "process"], env=env, capture_output=True,
                             text=True)  # fmt: skip
    if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
        raise StackError(f"prefect work-pool create {SWEEP_POOL} failed:\n{created.stdout}{created.stderr}")


def start_worker(stack: Stack, workspace: Path) -> None:
    args = [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process"]
    _spawn(stack, "worker", args, _prefect_env(stack), workspace)
    log = stack.root / "logs" / "worker.log"
    wait_until("prefect worker", lambda: "started" in (log.read_text(errors="replace") if log.is_file() else ""), 120, log)


def up(root: Path, workspace: Path) -> Stack:
    """Start what is not running; return the stack (its env is what clients export)."""
    stack = Stack.load_or_create(root)
    if not postgres_ready(stack):
        start_postgres(stack)
    create_databases(stack)
    if not answers(f"{stack.s3_endpoint}/moto-api/"):
        start_s3(stack)
    if not answers(f"{stack.mlflow_uri}/health"):
        start_mlflow(stack)
    if not answers(f"{stack.prefect_api}/health"):
        start_prefect(stack)
    if not service_alive(stack, "worker"):
        start_worker(stack, workspace)
    return stack


def down(root: Path) -> None:
    """Stop everything `up` started; the data stays in the folder (remove it to start afresh)."""
    if not (root / "stack.json").is_file():
        return
    stack = Stack.load_or_create(root)
    for name in ("worker", "prefect", "mlflow", "s3"):
        stop_service(stack, name)
    stop_postgres(stack)


def use_bucket_remote(stack: Stack, workspace: Path) -> None:
    """Make the bucket this checkout's default DVC remote, in its git-ignored .dvc/config.local only."""
    for args in (["remote", "add", "--local", "--force", "--default", "stack", stack.dvc_remote],
                 ["remote", "modify", "--local", "stack", "endpointurl", stack.s3_endpoint]):  # fmt: skip
        subprocess.run(dvc.command(*args), cwd=workspace, env=_base_env(), check=True, capture_output=True)


def exports(stack: Stack) -> str:
    return "\n".join(f"export {k}={v}" for k, v in stack.env().items())
