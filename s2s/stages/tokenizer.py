"""Stage `tokenizer`: SentencePiece model(s) trained on the training split."""

from __future__ import annotations

import argparse

from s2s import tokenizer
from s2s.config import Params
from s2s.layout import read_newline, read_prepared
from s2s.stages import stage_main


def _run(args: argparse.Namespace, params: Params) -> None:
    pairs = read_prepared(args.data, "train")
    tokenizer.train(params.tokenizer, [s for s, _ in pairs], [t for _, t in pairs], args.out, read_newline(args.data))


def main() -> None:
    stage_main("tokenizer", _run)


if __name__ == "__main__":
    main()
