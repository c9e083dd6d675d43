"""Stage `encode`: every prepared split tokenized once into memory-mapped id files (s2s.encoded), for training."""

from __future__ import annotations

import argparse

from s2s import encoded
from s2s.config import Params
from s2s.stages import stage_main
from s2s.tokenizer import Tokenizers


def _run(args: argparse.Namespace, params: Params) -> None:
    encoded.encode(Tokenizers.load(args.tokenizer), args.data, args.out)


def main() -> None:
    stage_main("encode", _run)


if __name__ == "__main__":
    main()
