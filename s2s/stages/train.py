"""Stage `train`: the model, its checkpoint, and per-epoch curves.

With `train.distributed` asking for more than one process, this stage
re-executes itself under `torchrun`; each worker joins the process group and
trains its shard, and rank 0 writes the stage's outputs.
"""

from __future__ import annotations

import argparse
import signal
import sys

from s2s import distributed, train
from s2s.config import Params
from s2s.layout import stage
from s2s.stages import stage_main


def _run(args: argparse.Namespace, params: Params) -> None:
    if distributed.needs_launch(params.train.distributed):
        distributed.launch(params.train.distributed, stage("train").module, sys.argv[1:])  # does not return
    world = distributed.init(params.train.device)
    for signum in (signal.SIGINT, signal.SIGTERM):  # finish the update, save the resume state, exit 128 + signum
        signal.signal(signum, train.request_stop)
    try:
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
            world,
            encoded=args.encoded,
        )
    finally:
        distributed.shutdown()


def main() -> None:
    stage_main("train", _run)


if __name__ == "__main__":
    main()
