"""Train every architecture through the full pipeline on the default corpus and compare them.

    .venv/bin/python benchmarks/compare_archs.py [--out /tmp/s2s-archs] [--only lstm-general transformer]

One workspace, one variant after another: each variant's params are written
and the real flow runs (`s2s run`), so DVC reuses ingest and tokenizer, each
variant trains, evaluates and is registered as its own model version. Prints a
markdown table (BLEU overall and by source length) and writes results.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s.layout import EVAL_METRICS, PARAMS_FILE, TRAIN_SUMMARY  # noqa: E402
from s2s.workspace import deep_merge, make_workspace, write_params  # noqa: E402

TRANSFORMER = {
    "model": {
        "arch": "transformer",
        "transformer": {"d_model": 128, "heads": 4, "encoder_layers": 2, "decoder_layers": 2, "ff": 512, "dropout": 0.1},
    },
    "train": {"lr": 0.002, "warmup_steps": 200},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "sutskever-lstm": {"model": {"rnn": {"cell": "lstm", "decoder": "sutskever"}}},
    "sutskever-gru": {"model": {"rnn": {"cell": "gru", "decoder": "sutskever"}}},
    "cho-gru": {"model": {"rnn": {"cell": "gru", "decoder": "cho"}}},
    "bahdanau-lstm": {"model": {"rnn": {"cell": "lstm", "decoder": "bahdanau"}}},
    "luong-lstm-dot": {"model": {"rnn": {"cell": "lstm", "decoder": "luong", "attention": "dot"}}},
    "luong-lstm-general": {"model": {"rnn": {"cell": "lstm", "decoder": "luong", "attention": "general"}}},
    "luong-lstm-concat": {"model": {"rnn": {"cell": "lstm", "decoder": "luong", "attention": "concat"}}},
    "luong-lstm-general-no-feeding": {"model": {"rnn": {"cell": "lstm", "decoder": "luong", "input_feeding": False}}},
    "luong-gru-general": {"model": {"rnn": {"cell": "gru", "decoder": "luong", "attention": "general"}}},
    "transformer": TRANSFORMER,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-archs"), help="workspace folder (created)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="variants to run (default: all)")
    args = parser.parse_args()
    base = yaml.safe_load((REPO / PARAMS_FILE).read_text())
    workspace = args.out / "ws"
    if not workspace.exists():
        make_workspace(workspace, base)
    results: dict[str, Any] = {}
    results_path = args.out / "results.json"
    if results_path.is_file():
        results = json.loads(results_path.read_text())
    for name in args.only or list(VARIANTS):
        params = yaml.safe_load((workspace / PARAMS_FILE).read_text())
        write_params(
            workspace,
            deep_merge(deep_merge(base, {k: v for k, v in params.items() if k in ("registry", "remote")}), VARIANTS[name]),
        )
        start = time.perf_counter()
        log = args.out / f"{name}.log"
        with log.open("w") as handle:
            code = subprocess.call(
                [sys.executable, "-m", "flows.cli", "run", "--workspace", str(workspace)],
                cwd=REPO,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        if code != 0:
            print(f"{name}: failed, see {log}", file=sys.stderr)
            continue
        metrics = json.loads((workspace / EVAL_METRICS).read_text())
        train = json.loads((workspace / TRAIN_SUMMARY).read_text())
        results[name] = {
            "bleu": metrics["bleu"],
            "chrf": metrics["chrf"],
            "by_source_length": metrics["by_source_length"],
            "parameters": train["parameters"],
            "train_seconds": train["train_seconds"],
            "tokens_per_second": train["tokens_per_second"],
            "pipeline_seconds": round(time.perf_counter() - start, 1),
            "signature": metrics["bleu_signature"],
        }
        results_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{name}: BLEU {metrics['bleu']}", flush=True)
    print(table(results))


def table(results: dict[str, Any]) -> str:
    buckets = sorted({b for r in results.values() for b in r["by_source_length"]}, key=lambda b: int(b.split("-")[0].lstrip(">")))
    head = "| model | params | train s | tok/s | BLEU | chrF | " + " | ".join(f"BLEU src {b} words" for b in buckets) + " |"
    rows = [head, "|" + "---|" * (6 + len(buckets))]
    for name, r in results.items():
        cells = [f"{r['by_source_length'].get(b, {}).get('bleu', '-')}" for b in buckets]
        head_cells = [name, f"{r['parameters'] / 1e6:.2f}M", f"{r['train_seconds']:.0f}", f"{r['tokens_per_second']:.0f}"]
        rows.append("| " + " | ".join([*head_cells, str(r["bleu"]), str(r["chrf"]), *cells]) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
