"""Stage `tokenizer`: SentencePiece model(s) trained on the training split."""

from __future__ import annotations

import argparse

from s2s import tokenizer
from s2s.config import Params
from s2s.layout import iter_lines, prepared_file, read_newline
from s2s.stages import stage_main


def _run(args: argparse.Namespace, params: Params) -> None:
    src, tgt = (iter_lines(prepared_file(args.data, "train", side)) for side in ("src", "tgt"))
    tokenizer.train(params.tokenizer, src, tgt, args.out, read_newline(args.data))


def main() -> None:
    stage_main("tokenizer", _run)


if __name__ == "__main__":
    main()
