"""CTranslate2 on this CPU: the speed of each compute type it offers, and whether int8 uses the CPU's int8 units.

    .venv/bin/python benchmarks/ct2_compute.py --workspace WS

WS is a trained workspace (`benchmarks/multi30k.py`'s, or a sweep trial's). The model is exported as s2s exports
it, in float32 and in int8; then each compute type CTranslate2 supports on this CPU
(`ctranslate2.get_supported_compute_types("cpu")`) decodes test_2016 greedy and with beam 5, batches of 128, in a
process of its own, the fastest of `--repeat` passes counting. The int8 types run a second time with Intel MKL
held to AVX2 (`MKL_ENABLE_INSTRUCTIONS=AVX2`: no AVX-512, VNNI or AMX): where int8 is no slower held back, it is
not using the int8 units. CTranslate2's own report of the ISA and GEMM backend it chose (`CT2_VERBOSE=1`) is
printed beside. Writes results-ct2-compute.json beside the workspace.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from serving import SEARCHES, test_set  # noqa: E402

from s2s.layout import MODEL_DIR, MODEL_FILE, TOKENIZER_DIR  # noqa: E402
from s2s.scoring import score  # noqa: E402

HELD_TO_AVX2 = {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
# The exported folder each compute type loads: int8 weights for the int8 types (s2s's 7-bit requantized export),
# float32 ones for the rest (CTranslate2 converts them when it loads).
FOLDER = {"int8": "int8", "int8_float32": "int8", "int8_float16": "int8", "int8_bfloat16": "int8"}


def measure(ws: Path, folder: Path, compute_type: str, repeat: int) -> dict[str, Any]:
    """One compute type, in this process: each search's BLEU and the fastest pass's sentences/s."""
    from s2s.ct2 import CT2Translator

    translator = CT2Translator.load(folder, ws / TOKENIZER_DIR, "cpu", compute_type=compute_type)
    sources, refs = test_set(ws)
    out: dict[str, Any] = {}
    for name, cfg in SEARCHES.items():
        seconds = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            texts = translator.translate(sources, cfg)
            seconds = min(seconds, time.perf_counter() - start)
        out[name] = {
            "bleu": score(texts, refs, metrics=("bleu",))["bleu"],
            "sentences_per_second": round(len(sources) / seconds, 1),
        }
    return out


def run_one(ws: Path, ct2_dir: Path, compute_type: str, env: dict[str, str], repeat: int) -> dict[str, Any]:
    folder = ct2_dir / FOLDER.get(compute_type, "float32")
    cmd = [sys.executable, __file__, "--workspace", str(ws), "--measure", compute_type, "--folder", str(folder),
           "--repeat", str(repeat)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env, "CT2_VERBOSE": "1"},
                          timeout=1800, check=True)  # fmt: skip
    report = [line.split("]", 2)[-1].strip() for line in done.stderr.splitlines() if "[info]" in line]  # CT2_VERBOSE
    return {"compute_type": compute_type, "env": env, "ct2_report": report, **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True, help="a trained workspace (its artifacts/model and test split)")
    parser.add_argument("--repeat", type=int, default=2, help="passes per compute type and search; the fastest counts")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one compute type, in a child process
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ws = args.workspace.resolve()
    if args.measure:
        print(json.dumps(measure(ws, args.folder, args.measure, args.repeat)))
        return
    import ctranslate2

    from s2s.ct2 import convert

    ct2_dir = ws / ".cache" / "ct2-compute"
    for quantization in ("float32", "int8"):
        convert(ws / MODEL_DIR / MODEL_FILE, ws / TOKENIZER_DIR, ct2_dir / quantization, quantization)  # type: ignore[arg-type]
    types = sorted(ctranslate2.get_supported_compute_types("cpu"))
    runs = [(t, {}) for t in types] + [(t, HELD_TO_AVX2) for t in types if t.startswith("int8")]
    rows = []
    for compute_type, env in runs:
        row = run_one(ws, ct2_dir, compute_type, env, args.repeat)
        rows.append(row)
        held = " (MKL held to AVX2)" if env else ""
        g, b = row["greedy"], row["beam5"]
        print(f"{compute_type + held:36s} greedy {g['sentences_per_second']:7.1f} sent/s BLEU {g['bleu']:5.2f}   "
              f"beam 5 {b['sentences_per_second']:7.1f} sent/s BLEU {b['bleu']:5.2f}", flush=True)  # fmt: skip
    for line in rows[0]["ct2_report"]:
        print(f"  CTranslate2: {line}")
    out = ws.parent / "results-ct2-compute.json"
    out.write_text(json.dumps({"ctranslate2": ctranslate2.__version__, "supported": types, "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
