"""Serving benchmark: PyTorch against CTranslate2 (float32, int8) on Multi30k test_2016, then HTTP under load.

    .venv/bin/python benchmarks/multi30k.py                      # trains the model this measures (22 min)
    .venv/bin/python benchmarks/serving.py                       # then this: offline engines + HTTP load tests
    .venv/bin/python benchmarks/serving.py --workspace /tmp/s2s-archs/ws-transformer-cpu --seconds 30

1. Offline: each engine decodes the test set greedy and with beam 5 (batches
   of 128 sentences, as a registered version does) in its own process, so each peak memory is its
   own, `--repeat` times (the fastest pass counts): BLEU, sentences/s, output
   tokens/s, peak RSS, threads, and how many translations equal PyTorch's.
2. HTTP: the model is registered in a scratch MLflow registry (the real
   `register`, then `export_version` for int8), each version served with
   `mlflow models serve`, and a bounded asyncio client keeps `--clients`
   requests in flight for `--seconds`: one test sentence per request, beam 5
   (a per-request param). Latency p50/p90/p99, throughput, errors, the
   server's peak memory.

Writes results-serving.json beside the workspace and prints a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.config import EvaluateConfig, RegistryConfig  # noqa: E402
from s2s.layout import MODEL_DIR, MODEL_FILE, PREPARED_DIR, TOKENIZER_DIR, read_prepared  # noqa: E402
from s2s.scoring import score  # noqa: E402

ENGINES = ("pytorch", "float32", "int8")  # PyTorch, then CTranslate2 with each quantization
# Batches of 128 sentences, the evaluate stage's default: what a registered version decodes a request with.
SEARCHES = {"greedy": EvaluateConfig(beam_size=1, batch_size=128), "beam5": EvaluateConfig(beam_size=5, batch_size=128)}
BIN = Path(sys.executable).parent


def test_set(ws: Path) -> tuple[list[str], list[str]]:
    pairs = read_prepared(ws / PREPARED_DIR, "test")
    return [s for s, _ in pairs], [t for _, t in pairs]


def measure(ws: Path, engine: str, ct2_dir: Path, repeat: int) -> dict[str, Any]:
    """One engine in this process: load, decode the test set both ways, peak RSS (run in a fresh process)."""
    from s2s.ct2 import CT2Translator
    from s2s.translate import Translator

    start = time.perf_counter()
    if engine == "pytorch":
        translator: Any = Translator.load(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, "cpu")
    else:
        translator = CT2Translator.load(ct2_dir / engine, ws / TOKENIZER_DIR, "cpu")
    load_seconds = time.perf_counter() - start
    sources, refs = test_set(ws)
    out: dict[str, Any] = {"engine": engine, "load_seconds": round(load_seconds, 2), "threads": torch.get_num_threads(),
                           "passes": repeat}  # fmt: skip
    for name, cfg in SEARCHES.items():
        seconds = float("inf")
        for _ in range(repeat):  # the fastest of `repeat` passes: this VM's timings vary by 10-15 % from run to run
            start = time.perf_counter()
            texts = translator.translate(sources, cfg)
            seconds = min(seconds, time.perf_counter() - start)
        # Output tokens counted the same way for every engine: the target tokenizer's pieces, plus EOS.
        tokens = sum(len(ids) + 1 for ids in translator.tok.encode_tgt(texts))
        out[name] = {
            "metrics": score(texts, refs, metrics=("bleu", "chrf")),
            "seconds": round(seconds, 2),
            "sentences_per_second": round(len(sources) / seconds, 1),
            "tokens_per_second": round(tokens / seconds, 1),
            "texts": texts,
        }
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def offline(ws: Path, ct2_dir: Path, repeat: int) -> dict[str, Any]:
    from s2s.ct2 import convert

    results: dict[str, Any] = {}
    for quantization in ENGINES[1:]:
        start = time.perf_counter()
        convert(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, ct2_dir / quantization, quantization)  # type: ignore[arg-type]
        size = sum(f.stat().st_size for f in (ct2_dir / quantization).iterdir()) / 1e6
        results[f"convert_{quantization}"] = {"seconds": round(time.perf_counter() - start, 1), "size_mb": round(size, 1)}
    for engine in ENGINES:
        args = [sys.executable, __file__, "--workspace", str(ws), "--measure", engine, "--ct2-dir", str(ct2_dir),
                "--repeat", str(repeat)]  # fmt: skip
        line = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results[engine] = json.loads(line)
        for name in SEARCHES:
            r = results[engine][name]
            print(f"  {engine:8s} {name:6s} BLEU {r['metrics']['bleu']:5.2f}  {r['sentences_per_second']:7.1f} sent/s  "
                  f"{r['tokens_per_second']:8.1f} tok/s  peak {results[engine]['peak_rss_mb']} MB", flush=True)  # fmt: skip
    for engine in ENGINES[1:]:
        for name in SEARCHES:
            ours, theirs = results["pytorch"][name]["texts"], results[engine][name]["texts"]
            results[engine][name]["identical_to_pytorch"] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    for engine in ENGINES:
        for name in SEARCHES:
            del results[engine][name]["texts"]
    return results


# --------------------------------------------------------------------------------- HTTP


def answering(server: subprocess.Popen[bytes], port: int) -> bool:
    """Whether the server answers /ping yet; an error once it has exited."""
    from ops.stack import answers

    if server.poll() is not None:
        raise RuntimeError(f"mlflow models serve exited with {server.returncode}")
    return answers(f"http://127.0.0.1:{port}/ping")


def group_peak_mb(pgid: int) -> float:
    """Summed peak RSS (VmHWM) of the server's process group: the CLI and the uvicorn worker it starts."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            if os.getpgid(int(status.parent.name)) != pgid:
                continue
            total += next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM"))
        except (OSError, StopIteration, ValueError):
            continue
    return round(total / 1024, 1)


async def load(port: int, sources: list[str], clients: int, seconds: float, params: dict[str, Any]) -> dict[str, Any]:
    """`clients` requests in flight until `seconds` have passed; one sentence each, in test-set order."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    counter = iter(range(10**9))
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            sentence = sources[next(counter) % len(sources)]
            start = time.perf_counter()
            try:
                response = await http.post("/invocations", json={"inputs": [sentence], "params": params})
                ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
                key = "" if ok else f"HTTP {response.status_code}"
            except (httpx.HTTPError, ValueError, KeyError) as err:
                key = type(err).__name__
            if key:
                errors[key] = errors.get(key, 0) + 1
            else:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    elapsed = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 1) if ordered else float("nan")

    return {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "requests_per_second": round(len(latencies) / elapsed, 2),
        "latency_ms": {"p50": pct(0.50), "p90": pct(0.90), "p99": pct(0.99), "max": pct(1.0)},
    }


def http(ws: Path, scratch: Path, clients: int, seconds: float) -> dict[str, Any]:
    """Register (PyTorch) and export (int8) in a scratch registry, serve each version, load-test it."""
    from mlflow import MlflowClient

    from ops.stack import free_port, wait_until
    from s2s.dvc import read_lock
    from s2s.registry import RunInputs, export_version, lineage_key, register

    scratch.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    registry = RegistryConfig(tracking_uri=uri, artifact_root=str(scratch / "mlartifacts"), model_name="s2s-serving-bench")
    lock = read_lock(ws)
    inputs = RunInputs(workspace=ws, registry=registry, trained_with=lock.params)
    pytorch = register(inputs, lineage_key(lock.outs, inputs.decoding), {"benchmark": "serving"}, "serving benchmark")
    int8 = export_version(MlflowClient(uri, uri), registry.name, pytorch.version, "int8", scratch / "export")
    sources, _ = test_set(ws)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**env, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{env['PATH']}"}
    results: dict[str, Any] = {}
    for engine, version in (("pytorch", pytorch.version), ("int8", int8.version)):
        port = free_port()
        log = (scratch / f"serve-{engine}.log").open("wb")
        cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{registry.name}/{version}",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
        server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_until("mlflow models serve", partial(answering, server, port), 180, scratch / f"serve-{engine}.log")
            asyncio.run(load(port, sources[:16], 2, 5.0, {"beam_size": 5}))  # warm-up, not counted
            results[engine] = asyncio.run(load(port, sources, clients, seconds, {"beam_size": 5}))
            results[engine]["server_peak_rss_mb"] = group_peak_mb(server.pid)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
        r = results[engine]
        print(f"  HTTP {engine:8s} {clients} clients {r['seconds']} s: {r['requests']} requests, {r['errors']} errors, "
              f"{r['requests_per_second']} req/s, p50 {r['latency_ms']['p50']} ms, p99 {r['latency_ms']['p99']} ms, "
              f"server peak {r['server_peak_rss_mb']} MB", flush=True)  # fmt: skip
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/s2s-multi30k/ws-transformer-cpu"),
                        help="a benchmarks/multi30k.py workspace with a trained Transformer")  # fmt: skip
    parser.add_argument("--clients", type=int, default=8, help="requests kept in flight (default 8)")
    parser.add_argument("--seconds", type=float, default=60.0, help="load-test length per engine (default 60)")
    parser.add_argument("--repeat", type=int, default=3, help="offline passes per engine and search; the fastest counts")
    parser.add_argument("--no-http", action="store_true", help="offline measurements only")
    parser.add_argument("--measure", choices=ENGINES, help=argparse.SUPPRESS)  # one engine, in a child process
    parser.add_argument("--ct2-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ws = args.workspace.resolve()
    if args.measure:
        print(json.dumps(measure(ws, args.measure, args.ct2_dir, args.repeat)))
        return
    if not (ws / MODEL_DIR / MODEL_FILE).is_file():
        sys.exit(f"{ws / MODEL_DIR / MODEL_FILE} not found: run benchmarks/multi30k.py first (or pass --workspace)")
    from benchmarks.multi30k import cpu_name

    scratch = ws.parent / "serving"
    print(f"serving benchmark on {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads", flush=True)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": f"{cpu_name()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "workspace": str(ws),
        "offline": offline(ws, scratch / "ct2", args.repeat),
    }
    if not args.no_http:
        results["http"] = http(ws, scratch / "registry", args.clients, args.seconds)
    out = ws.parent / "results-serving.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
