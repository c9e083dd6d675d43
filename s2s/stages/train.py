"""Stage `train`: the model, its checkpoint, and per-epoch curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2s import train
from s2s.config import Params
from s2s.stages import stage_main


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared splits folder")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    parser.add_argument("--out", type=Path, required=True, help="model folder (checkpoint)")
    parser.add_argument("--curve", type=Path, required=True, help="per-epoch CSV (DVC plots)")
    parser.add_argument("--summary", type=Path, required=True, help="JSON summary (DVC metrics)")
    parser.add_argument("--resume-dir", type=Path, default=None, help="where resume states live (outside DVC outputs)")


def _run(args: argparse.Namespace, params: Params) -> None:
    train.train(
        params.train,
        params.model,
        params.evaluate,
        args.data,
        args.tokenizer,
        args.out,
        args.curve,
        args.summary,
        args.resume_dir,
    )


def main() -> None:
    stage_main("train", _args, _run)


if __name__ == "__main__":
    main()
