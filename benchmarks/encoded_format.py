"""The encode stage's file format, measured: numpy memmap + offsets (fairseq's layout) against Apache Arrow.

    .venv/bin/python benchmarks/encoded_format.py                 # 3M items of 10-60 ids
    .venv/bin/python benchmarks/encoded_format.py --items 300000

Both keep one split side's token ids memory-mapped. Measured per format: writing, file size, opening (to the
lengths array training plans its batches from), and building training batches the way s2s does (64 rows at random
positions, each row's ids as a list), with the process's RSS after each step. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def write_numpy(lengths: np.ndarray, ids: np.ndarray, out: Path) -> None:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids.tofile(out / "ids.bin")
    offsets.tofile(out / "ids.idx")


def write_arrow(lengths: np.ndarray, ids: np.ndarray, out: Path) -> None:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    column = pa.ListArray.from_arrays(pa.array(offsets), pa.array(ids))
    table = pa.table({"ids": column})
    with pa.OSFile(str(out / "ids.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=1 << 20)


def open_numpy(out: Path) -> tuple[Callable[[list[int]], list[list[int]]], np.ndarray]:
    ids = np.memmap(out / "ids.bin", dtype=np.uint16, mode="r")
    offsets = np.memmap(out / "ids.idx", dtype=np.int64, mode="r")
    lengths = np.diff(offsets)

    def rows(index: list[int]) -> list[list[int]]:
        return [ids[offsets[i] : offsets[i + 1]].tolist() for i in index]

    return rows, lengths


def open_arrow(out: Path) -> tuple[Callable[[list[int]], list[list[int]]], np.ndarray]:
    table = pa.ipc.open_file(pa.memory_map(str(out / "ids.arrow"), "r")).read_all()
    column = table.column("ids")
    lengths = np.concatenate([chunk.value_lengths().to_numpy() for chunk in column.chunks])

    def rows(index: list[int]) -> list[list[int]]:
        taken: list[list[int]] = column.take(pa.array(index)).to_pylist()
        return taken

    return rows, lengths


def measure(name: str, lengths: np.ndarray, ids: np.ndarray, out: Path, batches: list[list[int]]) -> dict[str, float]:
    writer, opener = {"numpy": (write_numpy, open_numpy), "arrow": (write_arrow, open_arrow)}[name]
    out.mkdir(parents=True, exist_ok=True)
    _, write_s = timed(lambda: writer(lengths, ids, out))
    size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    before = rss_mb()
    (rows, mapped_lengths), open_s = timed(lambda: opener(out))
    assert np.array_equal(mapped_lengths, lengths)
    opened = rss_mb()
    _, batch_s = timed(lambda: [rows(b) for b in batches])
    return {"write_s": round(write_s, 2), "file_mb": round(size, 1), "open_s": round(open_s, 3),
            "rss_after_open_mb": round(opened - before, 1), "batch_ms": round(1000 * batch_s / len(batches), 3),
            "rss_after_batches_mb": round(rss_mb() - before, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=3_000_000)
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("/tmp/s2s-encoded-format"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 61, size=args.items)
    ids = rng.integers(4, 6500, size=int(lengths.sum()), dtype=np.uint16)
    batches = [rng.integers(0, args.items, size=64).tolist() for _ in range(args.batches)]
    results = {name: measure(name, lengths, ids, args.out / name, batches) for name in ("numpy", "arrow")}
    keys = list(results["numpy"])
    print(f"{args.items:,} items, {len(ids):,} ids; batches of 64 random rows")
    print("| format | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(str(row[k]) for k in keys) + " |")
    (args.out / "results.json").write_text(json.dumps({"items": args.items, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
