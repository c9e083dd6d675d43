"""Multi30k en->de benchmark: train under a wall-clock budget, then measure quality and speed.

    .venv/bin/python benchmarks/multi30k.py                          # the Transformer CPU recipe, its 22 minutes
    .venv/bin/python benchmarks/multi30k.py --cpu-budget 60          # the same recipe, 60 minutes of training
    .venv/bin/python benchmarks/multi30k.py --arch bahdanau-gru      # another architecture's CPU recipe (a preset)
    .venv/bin/python benchmarks/multi30k.py --table                  # every architecture, one after another, and the table
    .venv/bin/python benchmarks/multi30k.py --gpu                    # the GPU recipe (bf16, torch.compile)
    .venv/bin/python benchmarks/multi30k.py --gpu --nproc 8          # the same recipe on 8 processes (torchrun, DDP)
    .venv/bin/python benchmarks/multi30k.py --data /path/to/multi30k # another copy of the raw task-1 files
    .venv/bin/python benchmarks/multi30k.py --workspace WS           # measure a trained workspace (a sweep trial's)

Runs the real DVC stages (ingest, tokenizer, train, evaluate) in a scratch
workspace, then decodes test_2016_flickr greedy and with beam 5 (batched),
checks that batched beam search gives exactly the output of one-sentence-at-a-
time beam search, times greedy decoding one sentence at a time, counts the
training FLOPs per token and measures this machine's dense matmul throughput
in the same run. Prints a summary and writes everything as JSON (`--out`).
Run again with the same `--out`, it skips the unchanged stages and re-measures
decoding only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from s2s import dvc  # noqa: E402
from s2s.batching import encode_split  # noqa: E402
from s2s.config import EvaluateConfig  # noqa: E402
from s2s.layout import MODEL_DIR, MODEL_FILE, PREPARED_DIR, TOKENIZER_DIR, TRAIN_CURVE, TRAIN_SUMMARY, read_prepared  # noqa: E402
from s2s.scoring import score  # noqa: E402
from s2s.tokenizer import PAD  # noqa: E402
from s2s.train import batch_loss  # noqa: E402
from s2s.translate import Translator  # noqa: E402
from s2s.workspace import deep_merge, make_workspace  # noqa: E402

# The recipes are the presets users run (`s2s run --preset transformer-cpu`): one copy of each. ARCHS, in the
# order of the table: the classic family from the context vector alone to the Transformer, each a CPU recipe.
ARCHS = ("sutskever-lstm", "context-gru", "cho-gru", "bahdanau-gru", "luong-lstm", "transformer-cpu")
AMX_RECIPE = "transformer-cpu-amx"  # transformer-cpu for a CPU with bf16 units: --arch only (--table runs on any CPU)
GPU_RECIPE = "transformer-gpu"


MATMUL_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_gflops(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 3.0, n: int = 2048) -> float:
    """This machine's dense matmul throughput in one precision: a ceiling training is measured against.

    A precision the CPU only emulates (bf16 on AVX2: ~1 GFLOP/s, where one 2048^3 matmul takes 20 s) is measured on
    512x512 matrices, so that the measurement takes seconds."""
    probe = torch.randn(512, 512, device=device, dtype=dtype)
    start = time.perf_counter()
    probe @ probe
    if device.type == "cpu" and 2 * 512**3 / (time.perf_counter() - start) < 20e9:
        n = 512
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def matmul_peaks(device: torch.device) -> dict[str, float]:
    """The matmul peak in every precision: on an AMX CPU bf16 is ~6.6x float32, on an AVX2-only one it is slower."""
    return {name: round(matmul_gflops(device, dtype), 1) for name, dtype in MATMUL_DTYPES.items()}


def train_flops_per_token(translator: Translator, ws: Path, batch_tokens: int, label_smoothing: float) -> float:
    """Counted (not estimated) FLOPs of one training step per source+target token, on real training batches.

    PyTorch's FlopCounterMode adds up the matmuls and attention of the forward and backward passes: the
    work a dense matmul peak can be compared with. Elementwise ops, softmax and the optimizer are not counted.
    """
    data, _, _ = encode_split(translator.tok, ws / PREPARED_DIR, "train", 128)
    batches = data.batches(batch_tokens, shuffle=True, seed=0)[:8]
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, label_smoothing=label_smoothing)
    model = translator.model
    model.train()
    with FlopCounterMode(display=False) as counter:
        for batch in batches:
            batch_loss(model, batch.to(translator.device), criterion, 1.0).backward()
    model.zero_grad(set_to_none=True)
    model.eval()
    return counter.get_total_flops() / sum(b.n_src_tokens + b.n_tgt_tokens for b in batches)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "cpu"


def decode(
    translator: Translator, sources: list[str], refs: list[str], beam: int, batch: int, bf16: bool = False
) -> dict[str, Any]:
    """Decodes and scores `sources`; `bf16` under bf16 autocast (what training on a bf16 CPU runs in)."""
    cfg = EvaluateConfig(beam_size=beam, batch_size=batch)
    start = time.perf_counter()
    with torch.autocast(translator.device.type, dtype=torch.bfloat16, enabled=bf16):
        _, hyps = translator.hypotheses(sources, cfg)
    seconds = time.perf_counter() - start
    texts = translator.tok.decode_tgt([h.tokens for h in hyps])
    tokens = sum(len(h.tokens) + 1 for h in hyps)
    return {
        "texts": texts,
        "metrics": score(texts, refs),
        "seconds": round(seconds, 2),
        "sentences_per_second": round(len(sources) / seconds, 1),
        "tokens_per_second": round(tokens / seconds, 1),
    }


def bf16_decoding(
    translator: Translator, sources: list[str], refs: list[str], greedy: dict[str, Any], beam: dict[str, Any]
) -> dict[str, Any]:
    """Greedy and beam 5 again under bf16 autocast: their scores, speed and the share of outputs equal to float32's."""
    result = {}
    for name, size, batch, fp32 in (("greedy", 1, 128, greedy), ("beam5", 5, 64, beam)):
        run_bf16 = decode(translator, sources, refs, beam=size, batch=batch, bf16=True)
        same = sum(a == b for a, b in zip(run_bf16.pop("texts"), fp32["texts"], strict=True)) / len(sources)
        result[name] = {**run_bf16, "same_as_float32": round(same, 4)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cpu-budget", type=float, default=None, help="minutes of CPU training (default: the recipe's)")
    mode.add_argument("--gpu", action="store_true", help="the GPU recipe, 20 minutes of training")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--arch", choices=(*ARCHS, AMX_RECIPE), default="transformer-cpu", help="the CPU recipe (a preset) to run")
    which.add_argument("--table", action="store_true", help="run every --arch in turn, then print the table of all")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/multi30k", help="folder of the raw files")
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-multi30k"), help="workspace and results folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's choice)")
    parser.add_argument("--limit", type=int, default=0, help="decode only the first N test sentences (a quick check; 0: all)")
    parser.add_argument("--nproc", type=int, default=1, help="training processes (torchrun; batch_tokens stays the global batch)")
    parser.add_argument("--no-decode", action="store_true", help="train and report training figures only (throughput runs)")
    parser.add_argument("--workspace", type=Path, help="measure this trained workspace (a sweep trial's) instead of training")
    args = parser.parse_args()
    if args.table:
        results = [run(args, arch) for arch in ARCHS]
        print(table([r for r in results if r is not None]))
    else:
        run(args, GPU_RECIPE if args.gpu else args.arch)


def table(results: list[dict[str, Any]]) -> str:
    """The BENCHMARKS.md table: one row per architecture."""
    rows = [
        "| recipe (preset) | parameters | training | test BLEU greedy / beam 5 | chrF / TER / ROUGE-L, beam 5 "
        "| training tokens/s (share of matmul peak) | decoding sent/s: greedy batched / one at a time / beam 5 batched |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        g, b, t = r["test_2016_flickr"]["greedy"], r["test_2016_flickr"]["beam5"], r["train"]
        one_at_a_time = r["greedy_one_at_a_time"]["sentences_per_second"]
        cells = [
            f"`{r['recipe']}`",
            f"{r['model_parameters'] / 1e6:.2f}M",
            f"{t['train_seconds'] / 60:.1f} min, {t['epochs']} epochs, {t['updates']:,} updates; kept {t['kept']}",
            f"**{g['metrics']['bleu']}** / **{b['metrics']['bleu']}**",
            f"{b['metrics']['chrf']} / {b['metrics']['ter']} / {b['metrics']['rougeL']}",
            f"{t['tokens_per_second']:,.0f} ({r['train_fraction_of_matmul']:.0%} of {r['matmul_gflops']:.0f} GFLOP/s "
            f"{r.get('train_precision', 'float32')}; {r.get('train_fraction_of_best_matmul', r['train_fraction_of_matmul']):.0%} "
            "of the best precision's)",
            f"{g['sentences_per_second']} / {one_at_a_time} / {b['sentences_per_second']}",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def run(args: argparse.Namespace, recipe: str) -> dict[str, Any] | None:
    """Train one recipe through the real DVC stages, then measure it; writes and returns results-RECIPE.json's content."""
    preset = yaml.safe_load((REPO / "presets/multi30k.yaml").read_text())
    recipe_values = yaml.safe_load((REPO / "presets" / f"{recipe}.yaml").read_text())
    budget = args.cpu_budget if args.cpu_budget is not None and not args.gpu else recipe_values["train"]["max_minutes"]
    files = {split: {side: {"path": str((args.data / f"{name}.{lang}.gz").resolve()),
                            "sha256": preset["ingest"]["files"][split][side]["sha256"]}
                     for side, lang in (("src", "en"), ("tgt", "de"))}
             for split, name in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr"))}  # fmt: skip
    params = deep_merge(deep_merge(preset, recipe_values), {"ingest": {"files": files}})
    train_options = {"max_minutes": budget, "threads": args.threads, "distributed": {"nproc_per_node": args.nproc}}
    params = deep_merge(params, {"train": train_options, "remote": {"push": False}})
    name = recipe if args.nproc == 1 else f"{recipe}-{args.nproc}proc"
    if args.cpu_budget is not None and not args.gpu:
        name = f"{name}-{args.cpu_budget:g}min"
    ws = args.out / f"ws-{name}"
    pipeline_seconds = None
    if args.workspace is not None:  # trained already (a sweep trial's workspace): measured as it is
        ws, name = args.workspace, f"{recipe}-{args.workspace.name}"
        params = yaml.safe_load((ws / "params.yaml").read_text())
        budget = params["train"]["max_minutes"]
    else:
        if not ws.exists():
            make_workspace(ws, params)
        start = time.perf_counter()
        subprocess.run(dvc.command("repro"), cwd=ws, env=dvc.env(), check=True)
        pipeline_seconds = round(time.perf_counter() - start, 1)

    train = json.loads((ws / TRAIN_SUMMARY).read_text())
    with (ws / TRAIN_CURVE).open() as handle:
        curve = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    print(f"training on {train['processes']} process(es), {train['device']}: {train['tokens_per_second']} tok/s in total, "
          f"{train['tokens_per_second_per_process']} per process; {train['epochs']} epochs, {train['updates']} updates, "
          f"best valid BLEU {train['best_valid_bleu']}")  # fmt: skip
    if args.no_decode:
        args.out.mkdir(parents=True, exist_ok=True)
        summary = {"command": " ".join(sys.argv), "train": train, "pipeline_seconds": pipeline_seconds}
        (args.out / f"results-{name}-train.json").write_text(json.dumps(summary, indent=2) + "\n")
        return None
    device = torch.device(train["device"])
    if args.threads:
        torch.set_num_threads(args.threads)
    translator = Translator.load(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, train["device"])
    pairs = read_prepared(ws / PREPARED_DIR, "test")
    pairs = pairs[: args.limit] if args.limit else pairs
    sources, refs = [s for s, _ in pairs], [t for _, t in pairs]
    greedy = decode(translator, sources, refs, beam=1, batch=128)
    beam = decode(translator, sources, refs, beam=5, batch=64)
    n = min(200, len(sources))  # one sentence at a time is slow; the speed-up is measured on the first 200
    batched = decode(translator, sources[:n], refs[:n], beam=5, batch=64)
    single = decode(translator, sources[:n], refs[:n], beam=5, batch=1)
    greedy_single = decode(translator, sources[:n], refs[:n], beam=1, batch=1)  # what an interactive user waits for
    peaks = matmul_peaks(device)
    trained_in = train.get("precision", "float32")
    bf16 = bf16_decoding(translator, sources, refs, greedy, beam) if trained_in == "bfloat16" else None
    peak, best = peaks[trained_in], max(peaks.values())
    params_count = train["parameters"]
    flops_per_token = train_flops_per_token(translator, ws, params["train"]["batch_tokens"], params["train"]["label_smoothing"])
    train_gflops = flops_per_token * train["tokens_per_second"] / 1e9
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "recipe": recipe,
        "arch": params["model"]["arch"],
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"{cpu_name()}, {os.cpu_count()} cores",
        "train_budget_minutes": budget,
        "train": train,
        "train_curve": curve,
        "pipeline_seconds": pipeline_seconds,
        "workspace": str(ws),
        "test_sentences": len(sources),
        "test_2016_flickr": {
            "greedy": {k: v for k, v in greedy.items() if k != "texts"},
            "beam5": {k: v for k, v in beam.items() if k != "texts"},
        },
        "beam5_batched_vs_one_at_a_time": {
            "identical_output": batched["texts"] == single["texts"],
            "batched_sentences_per_second": batched["sentences_per_second"],
            "one_at_a_time_sentences_per_second": single["sentences_per_second"],
            "speedup": round(batched["sentences_per_second"] / single["sentences_per_second"], 2),
        },
        "greedy_one_at_a_time": {
            "sentences_per_second": greedy_single["sentences_per_second"],
            "milliseconds_per_sentence": round(1000 * greedy_single["seconds"] / n, 1),
        },
        "bf16_decoding": bf16,
        "cpu_flags": train.get("cpu_flags", []),
        "train_precision": trained_in,
        "matmul_gflops_by_precision": peaks,
        "matmul_gflops": peak,  # of the precision training ran in
        "train_flops_per_token": round(flops_per_token),
        "train_gflops": round(train_gflops, 2),
        "train_fraction_of_matmul": round(train_gflops / peak, 3),
        "train_fraction_of_best_matmul": round(train_gflops / best, 3),
        "model_parameters": params_count,
        "peak_memory_mb": train.get("peak_memory_mb"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"results-{name}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    g, b = results["test_2016_flickr"]["greedy"], results["test_2016_flickr"]["beam5"]
    print(f"Multi30k en->de test_2016_flickr, {recipe} recipe, {budget:g} min budget on {results['device']}")
    for label, r in (("greedy", g), ("beam 5", b)):
        m = r["metrics"]
        print(
            f"  {label:7s} BLEU {m['bleu']}  chrF {m['chrf']}  {r['sentences_per_second']} sent/s  {r['tokens_per_second']} tok/s"
        )
    print(f"  signature {b['metrics']['bleu_signature']}")
    print(
        f"  training in {trained_in}: {train['epochs']} epochs, {train['train_seconds']} s, {train['tokens_per_second']} "
        f"tok/s, ~{results['train_fraction_of_matmul']:.0%} of this machine's {peak:.0f} GFLOP/s {trained_in} matmul, "
        f"{results['train_fraction_of_best_matmul']:.0%} of its best ({best:.0f}); CPU flags: {' '.join(results['cpu_flags'])}"
    )
    print("  matmul peaks: " + ", ".join(f"{name} {value:.0f} GFLOP/s" for name, value in peaks.items()))
    if bf16 is not None:
        for label, r in (("greedy", bf16["greedy"]), ("beam 5", bf16["beam5"])):
            print(f"  {label:7s} in bf16: BLEU {r['metrics']['bleu']}  {r['sentences_per_second']} sent/s, "
                  f"{r['same_as_float32']:.1%} of outputs the same as float32's")  # fmt: skip
    bb = results["beam5_batched_vs_one_at_a_time"]
    print(f"  beam 5 batched vs one at a time: {bb['speedup']}x, identical output: {bb['identical_output']}")
    print(f"  greedy, one sentence at a time: {results['greedy_one_at_a_time']['sentences_per_second']} sent/s")
    print(f"  {params_count / 1e6:.1f}M parameters, peak memory {results['peak_memory_mb']} MB -> {out}")
    return results


if __name__ == "__main__":
    main()
