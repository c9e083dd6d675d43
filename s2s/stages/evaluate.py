"""Stage `evaluate`: decode the test split, score it with sacreBLEU."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2s import evaluate
from s2s.config import Params
from s2s.stages import stage_main
from s2s.translate import MODEL_FILE, Translator


def _args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="prepared splits folder")
    parser.add_argument("--tokenizer", type=Path, required=True, help="tokenizer folder")
    parser.add_argument("--model", type=Path, required=True, help="model folder (checkpoint)")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON metrics file")
    parser.add_argument("--hypotheses", type=Path, required=True, help="TSV of source, reference, hypothesis")
    parser.add_argument("--attention", type=Path, required=True, help="folder for attention-map PNGs")


def _run(args: argparse.Namespace, params: Params) -> None:
    translator = Translator.load(args.model / MODEL_FILE, args.tokenizer, params.train.device)
    evaluate.run(params.evaluate, translator, args.data, args.metrics, args.hypotheses, args.attention)


def main() -> None:
    stage_main("evaluate", _args, _run)


if __name__ == "__main__":
    main()
