"""Training speed on this machine: what torch.compile, Adam's kernels, threads, batch size and malloc give.

    .venv/bin/python benchmarks/train_speed.py --workspace WS               # every variant of the table
    .venv/bin/python benchmarks/train_speed.py --workspace WS --only compile  # variants whose name contains "compile"

WS is a workspace that has run the tokenizer stage on Multi30k (e.g. the one `benchmarks/multi30k.py` leaves
in --out). Each variant runs in its own process (a fresh compile cache, its own thread setting): the real
`Trainer.train_step` of the `transformer-cpu` recipe on the same training batches, `--warmup` updates
untimed (compilation happens there), then `--steps` timed. Prints tokens/s, the share of this machine's
matmul peak (measured before and after, the lower kept) and the change against the first variant; writes
JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from multi30k import cpu_name, matmul_peaks, train_flops_per_token  # noqa: E402

from s2s import presets  # noqa: E402
from s2s.config import parse_params  # noqa: E402
from s2s.layout import PARAMS_FILE, PREPARED_DIR, TOKENIZER_DIR  # noqa: E402
from s2s.train import Trainer  # noqa: E402
from s2s.workspace import deep_merge  # noqa: E402

# name -> (train-section overrides of the recipe, environment of its process); the first is the reference.
# Every variant starts from PyTorch's defaults, Adam's per-tensor loop and glibc's malloc as it comes
# (train.adam_kernel: auto, train.malloc: system), whatever the recipe sets, unless it names another setting.
# The environment variant is the first allocator setting tried: glibc's largest mmap threshold, no trimming.
MMAP_32MB = {"MALLOC_MMAP_THRESHOLD_": str(32 * 2**20), "MALLOC_TRIM_THRESHOLD_": str(2**34), "MALLOC_TOP_PAD_": str(2**28)}
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    "recipe (adam loop, 2 threads, eager)": ({}, {}),
    "adam foreach": ({"adam_kernel": "foreach"}, {}),
    "adam fused": ({"adam_kernel": "fused"}, {}),
    "1 thread": ({"threads": 1}, {}),
    "compile": ({"compile": True}, {}),
    "compile + adam fused": ({"compile": True, "adam_kernel": "fused"}, {}),
    "batch_tokens 4000": ({"batch_tokens": 4000}, {}),
    "batch_tokens 4000 + adam fused": ({"batch_tokens": 4000, "adam_kernel": "fused"}, {}),
    "batch_tokens 6000 + adam fused": ({"batch_tokens": 6000, "adam_kernel": "fused"}, {}),
    "adam fused + malloc keep (the recipe)": ({"adam_kernel": "fused", "malloc": "keep"}, {}),
    "adam fused + mmap threshold 32 MB, no trim (env)": ({"adam_kernel": "fused"}, MMAP_32MB),
    # Precision: the recipe's settings forced to float32 and to bf16 autocast (train.amp; s2s.precision).
    "the recipe in float32 (amp off)": ({"adam_kernel": "fused", "malloc": "keep", "amp": "off"}, {}),
    "the recipe in bf16 (amp bf16)": ({"adam_kernel": "fused", "malloc": "keep", "amp": "bf16"}, {}),
}


def measure(workspace: Path, recipe: str, train: dict[str, Any], warmup: int, steps: int) -> dict[str, Any]:
    """Time `steps` updates of the recipe with `train` overrides (after `warmup` untimed ones), in this process."""
    raw = deep_merge(parse_params({}).model_dump(mode="json"), presets.find(recipe).values)
    raw = deep_merge(
        raw,
        {"train": {"adam_kernel": "auto", "malloc": "system", **train, "device": "cpu", "max_minutes": 0, "checkpoint_every": 0}},
    )
    params = parse_params(raw)
    trainer = Trainer(params.train, params.model, params.evaluate, workspace / PREPARED_DIR, workspace / TOKENIZER_DIR)
    batches = trainer.epoch_batches(1)
    trainer.model.train()
    for step, index in enumerate(batches[:warmup], 1):
        trainer.train_step(index, 1, step)
    tokens = 0
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    for step, index in enumerate(batches[warmup : warmup + steps], warmup + 1):
        trainer.train_step(index, 1, step)
        tokens += trainer.train_data.target_tokens(index) + trainer.train_data.source_tokens(index)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    flops = train_flops_per_token(trainer.translator, workspace, params.train.batch_tokens, params.train.label_smoothing)
    return {
        "tokens_per_second": tokens / seconds,
        "seconds": seconds,
        "flops_per_token": flops,
        "threads": torch.get_num_threads(),
        "precision": trainer.precision.dtype,
        "kernel_share": (after.ru_stime - before.ru_stime) / cpu,  # CPU time in the kernel: page faults, mostly
        "page_faults_per_update": (after.ru_minflt - before.ru_minflt) / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace with data/prepared and artifacts/tokenizer")
    parser.add_argument("--recipe", default="transformer-cpu", help="the preset measured (default: transformer-cpu)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed updates first (compilation happens there)")
    parser.add_argument("--steps", type=int, default=60, help="timed updates")
    parser.add_argument("--only", default="", help="run the variants whose name matches this regular expression")
    parser.add_argument("--out", type=Path, default=Path("train-speed.json"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(args.workspace.resolve(), args.recipe, json.loads(args.variant), args.warmup, args.steps)))
        return
    if not (args.workspace / PARAMS_FILE).is_file():
        parser.error(f"{args.workspace} is not a workspace (no {PARAMS_FILE})")
    peaks_before = matmul_peaks(torch.device("cpu"))
    rows = []
    for name, (train, env) in VARIANTS.items():
        if not re.search(args.only, name):
            continue
        cmd = [sys.executable, __file__, "--workspace", str(args.workspace), "--recipe", args.recipe, "--warmup",
               str(args.warmup), "--steps", str(args.steps), "--variant", json.dumps(train)]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr[-3000:]}", file=sys.stderr)
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"variant": name, "train": train, "env": env, **result})
        print(f"{name:34s} {result['tokens_per_second']:8,.0f} tok/s", flush=True)
    peaks_after = matmul_peaks(torch.device("cpu"))
    peaks = {name: min(value, peaks_after[name]) for name, value in peaks_before.items()}
    reference = rows[0]["tokens_per_second"] if rows else 1.0
    listed = ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
    print(f"\n{cpu_name()}, {torch.get_num_threads()} threads, matmul peaks GFLOP/s (lower of before/after): {listed}")
    print(
        "| variant | precision | tokens/s | vs first | share of its precision's matmul peak | kernel share of CPU time "
        "| page faults per update |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        row["fraction_of_matmul"] = row["flops_per_token"] * row["tokens_per_second"] / 1e9 / peaks[row["precision"]]
        change = row["tokens_per_second"] / reference - 1
        print(f"| {row['variant']} | {row['precision']} | {row['tokens_per_second']:,.0f} | {change:+.0%} "
              f"| {row['fraction_of_matmul']:.0%} "
              f"| {row['kernel_share']:.0%} | {row['page_faults_per_update']:,.0f} |")  # fmt: skip
    args.out.write_text(json.dumps({"cpu": cpu_name(), "matmul_gflops": peaks, "recipe": args.recipe, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
