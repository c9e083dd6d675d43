"""Run by tests/test_distributed.py, under torchrun or alone: the Trainer on this process's rank.

`steps N`: N updates over the first global batches of epoch 1, then each rank saves its parameters to
OUT/rank<R>.pt. `fit`: a whole training run whose every output path names the rank (OUT/rank<R>/...),
so the test can see which ranks wrote.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from s2s import distributed, train
from s2s.config import load_params


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["steps", "fit"])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--encoded", type=Path, default=None, help="the encode stage's files, to train from them")
    args = parser.parse_args()
    params = load_params(args.params)
    world = distributed.init(params.train.device)
    try:
        if args.mode == "steps":
            trainer = train.Trainer(params.train, params.model, params.evaluate, args.data, args.tokenizer, world=world,
                                    encoded=args.encoded)  # fmt: skip
            trainer.model.train()
            batches = trainer.epoch_batches(1)
            assert len(batches) >= args.steps, f"only {len(batches)} batches in an epoch"
            for step, index in enumerate(batches[: args.steps], 1):
                trainer.train_step(index, 1, step)
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(trainer.model.state_dict(), args.out / f"rank{world.rank}.pt")
        else:
            mine = args.out / f"rank{world.rank}"
            train.train(params.train, params.model, params.evaluate, args.data, args.tokenizer, mine / "model",
                        mine / "curve.csv", mine / "train.json", mine / "resume", world)  # fmt: skip
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main()
