"""Scaling benchmark: each stage's wall time and peak memory as the training corpus grows.

    .venv/bin/python benchmarks/scale.py --out /tmp/s2s-scale                          # 30k, 300k, 1M, 3M pairs
    .venv/bin/python benchmarks/scale.py --sizes 30000 300000 --train-minutes 1 --out /tmp/s2s-scale-quick

For every size, a corpus is generated deterministically from Multi30k's training sentences (each pair joins two
real sentence pairs, so lengths and vocabulary are realistic; valid and test are Multi30k's own), then every stage
of the pipeline runs as DVC would run it (`python -m s2s.stages.NAME` in a workspace), one after another, with the
`transformer-cpu` recipe and `train.max_minutes` cut to `--train-minutes`. Each stage's wall time, peak RSS
(VmHWM) and peak private memory (RssAnon) are its own process's, sampled every 50 ms; training also reports its
start-up (process start to the end of the first update) and tokens/s. The table ends with each column's growth
exponent: the slope of log(cost) over log(pairs), least squares over the sizes. Writes `scale.json` and
`scale.md` under `--out`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.layout import EVAL_METRICS, INGEST_STATS, PARAMS_FILE, RAW_DIR, STAGES, TRAIN_SUMMARY  # noqa: E402
from s2s.precision import MATMUL_CPU_FLAGS, cpu_flags  # noqa: E402
from s2s.train_records import TrainSummary  # noqa: E402
from s2s.workspace import deep_merge, make_workspace  # noqa: E402

SIZES = (30_000, 300_000, 1_000_000, 3_000_000)
RECIPE = "transformer-cpu"


@dataclass(frozen=True)
class StageCost:
    stage: str
    seconds: float
    peak_rss_mb: float
    # Sampled every 50 ms from /proc: the stage process's private memory (RssAnon) at its highest. Peak RSS also
    # counts the pages of mapped files it touched (training's ids), which the kernel may drop at any time.
    peak_anon_mb: float = 0.0


def generate(en: list[str], de: list[str], pairs: int, seed: int, out: Path) -> None:
    """`pairs` pairs, each two random Multi30k pairs joined (same seed, same files); plain text, line-aligned."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train.en").open("w", encoding="utf-8") as src, (out / "train.de").open("w", encoding="utf-8") as tgt:
        for _ in range(pairs):
            a, b = rng.randrange(len(en)), rng.randrange(len(en))
            src.write(f"{en[a]} {en[b]}\n")
            tgt.write(f"{de[a]} {de[b]}\n")


def read_gz_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n") for line in handle]


def run_stage(ws: Path, module: str, log_path: Path, timeout: float) -> StageCost:
    """Run one stage's entry point in the workspace; its own wall time and peak RSS (not the benchmark's)."""
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", module, "--params", PARAMS_FILE], cwd=ws, stdout=log, stderr=log)
        deadline = start + timeout
        anon = hwm = 0
        while True:
            now = status_kb(proc.pid)
            anon, hwm = max(anon, now.get("RssAnon", 0)), max(hwm, now.get("VmHWM", 0))
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise TimeoutError(f"{module} ran past {timeout:.0f} s; see {log_path}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{module} exited {proc.returncode}; see {log_path}")
    # Peak RSS: the stage's own VmHWM as last sampled. wait4's ru_maxrss is no use here: a forked child starts with
    # its parent's high-water mark and keeps it across exec, so every small stage reported this benchmark's own size.
    return StageCost(module.rsplit(".", 1)[-1], round(time.perf_counter() - start, 2), round(hwm / 1024, 1),
                     round(anon / 1024, 1))  # fmt: skip


def status_kb(pid: int) -> dict[str, int]:
    """A live process's /proc status sizes in kB (VmHWM, RssAnon, ...); empty once it has gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if v.strip().endswith("kB")}


def measure(size: int, args: argparse.Namespace, en: list[str], de: list[str]) -> dict[str, Any]:
    ws = args.out / f"ws-{size}"
    preset = yaml.safe_load((REPO / "presets/multi30k.yaml").read_text())
    recipe = yaml.safe_load((REPO / "presets" / f"{RECIPE}.yaml").read_text())
    files = {
        "train": {"src": {"path": f"{RAW_DIR}/train.en", "sha256": None}, "tgt": {"path": f"{RAW_DIR}/train.de", "sha256": None}},
        **{split: {side: {"path": str((args.data / f"{name}.{lang}.gz").resolve()),
                          "sha256": preset["ingest"]["files"][split][side]["sha256"]}
                   for side, lang in (("src", "en"), ("tgt", "de"))}
           for split, name in (("valid", "val"), ("test", "test_2016_flickr"))},
    }  # fmt: skip
    params = deep_merge(deep_merge(preset, recipe), {"ingest": {"files": files}})
    # Validation scores 100 sentences: an untrained model's outputs run to the length limit, and the cost is per run.
    train = {"max_minutes": args.train_minutes, "threads": args.threads, "valid_bleu_sentences": 100}
    params = deep_merge(params, {"train": train, "evaluate": {"beam_size": 1, "also": []}, "remote": {"push": False}})
    if ws.exists():
        subprocess.run(["rm", "-rf", str(ws)], check=True)
    make_workspace(ws, params)
    start = time.perf_counter()
    generate(en, de, size, args.seed, ws / RAW_DIR)
    generated = round(time.perf_counter() - start, 1)
    costs = []
    for stage in STAGES:
        cost = run_stage(ws, stage.module, args.out / f"log-{size}-{stage.name}.txt", args.stage_timeout)
        print(f"  {size:>9,} pairs  {cost.stage:9s} {cost.seconds:8.1f} s  peak {cost.peak_rss_mb:8.1f} MB", flush=True)
        costs.append(cost)
    train = TrainSummary.read(ws / TRAIN_SUMMARY)
    kept = json.loads((ws / INGEST_STATS).read_text())["train"]["kept"]
    result = {
        "pairs": size,
        "train_pairs_kept": kept,
        "generate_seconds": generated,
        "stages": [asdict(c) for c in costs],
        "train_startup_seconds": train.startup_seconds,
        "train_tokens_per_second": train.tokens_per_second,
        "train_updates": train.updates,
        "eval": json.loads((ws / EVAL_METRICS).read_text()).get("bleu"),
    }
    if not args.keep:
        subprocess.run(["rm", "-rf", str(ws)], check=True)
    return result


def exponent(sizes: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) over log(size): 1.0 grows linearly, 0 stays flat."""
    xs, ys = [math.log(s) for s in sizes], [math.log(max(v, 1e-6)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def columns(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    """The table's cost columns, one value per size."""
    out: dict[str, list[float]] = {}
    for r in results:
        for c in r["stages"]:
            out.setdefault(f"{c['stage']} s", []).append(c["seconds"])
            out.setdefault(f"{c['stage']} peak MB", []).append(c["peak_rss_mb"])
            if c.get("peak_anon_mb"):
                out.setdefault(f"{c['stage']} peak anon MB", []).append(c["peak_anon_mb"])
        out.setdefault("train start-up s", []).append(r["train_startup_seconds"])
        out.setdefault("train tok/s", []).append(r["train_tokens_per_second"])
    return out


def table(results: list[dict[str, Any]]) -> str:
    """Each cost column by size, its growth exponent over all sizes, and over the two largest (where fixed costs,
    such as importing PyTorch, no longer hide the growth)."""
    cols = columns(results)
    sizes = [r["pairs"] for r in results]
    head = "| column | " + " | ".join(f"{s:,} pairs" for s in sizes) + " | growth exponent: all sizes / two largest |"
    rows = [head, "|---" * (len(sizes) + 2) + "|"]
    for name, values in cols.items():
        slopes = (exponent(sizes, values), exponent(sizes[-2:], values[-2:])) if len(sizes) > 1 else (math.nan, math.nan)
        rows.append(f"| {name} | " + " | ".join(f"{v:,.1f}" for v in values) + f" | {slopes[0]:.2f} / {slopes[1]:.2f} |")
    for stage in ("ingest", "encode"):  # the throughput targets: pairs per second of the stage's wall time
        seconds = [c["seconds"] for r in results for c in r["stages"] if c["stage"] == stage]
        if len(seconds) == len(sizes):
            rates = [f"{pairs / t:,.0f}" for pairs, t in zip(sizes, seconds, strict=True)]
            rows.append(f"| {stage} pairs/s | " + " | ".join(rates) + " | |")
    return "\n".join(rows)


def cpu_model() -> str:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="training pairs per corpus")
    parser.add_argument("--train-minutes", type=float, default=2.0, help="train.max_minutes of each training run")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/multi30k", help="Multi30k's raw files")
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-scale"), help="workspaces and results")
    parser.add_argument("--threads", type=int, default=0, help="training threads (0: PyTorch's choice)")
    parser.add_argument("--seed", type=int, default=1, help="corpus generator seed")
    parser.add_argument("--stage-timeout", type=float, default=3600.0, help="seconds any one stage may run")
    parser.add_argument("--keep", action="store_true", help="keep each size's workspace (disk: ~1 GB per million pairs)")
    parser.add_argument("--label", default="", help="a name for this run in the results (e.g. before, after)")
    parser.add_argument("--render", type=Path, default=None, help="print the table of a scale.json written before, and exit")
    args = parser.parse_args()
    if args.render is not None:
        print(table(json.loads(args.render.read_text())["results"]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    en, de = read_gz_lines(args.data / "train.en.gz"), read_gz_lines(args.data / "train.de.gz")
    flags = " ".join(f for f in MATMUL_CPU_FLAGS if f in cpu_flags())
    machine = f"{cpu_model()}, {os.cpu_count()} cores; flags: {flags}"
    print(f"scaling benchmark on {machine}", flush=True)
    results = [measure(size, args, en, de) for size in sorted(args.sizes)]
    report = {"label": args.label, "date": time.strftime("%Y-%m-%d"), "machine": machine, "recipe": RECIPE,
              "train_minutes": args.train_minutes, "command": " ".join(sys.argv), "results": results}  # fmt: skip
    (args.out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    text = table(results)
    (args.out / "scale.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
