"""Stage `train`: the model, its checkpoint, and per-epoch curves."""

from __future__ import annotations

import argparse

from s2s import train
from s2s.config import Params
from s2s.stages import stage_main


def _run(args: argparse.Namespace, params: Params) -> None:
    train.train(
        params.train,
        params.model,
        params.evaluate.for_validation(),  # the evaluate keys this stage declares in s2s.layout, no others
        args.data,
        args.tokenizer,
        args.out,
        args.curve,
        args.summary,
        args.resume_dir,
    )


def main() -> None:
    stage_main("train", _run)


if __name__ == "__main__":
    main()
