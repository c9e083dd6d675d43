"""Stage `tokenizer`: SentencePiece model(s) trained on the training split."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2s import tokenizer
from s2s.config import Params
from s2s.ingest import read_prepared
from s2s.stages import stage_main


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared splits folder")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer folder")


def _run(args: argparse.Namespace, params: Params) -> None:
    pairs = read_prepared(args.data, "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], args.out)


def main() -> None:
    stage_main("tokenizer", _args, _run)


if __name__ == "__main__":
    main()
