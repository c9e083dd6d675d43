"""Stage `evaluate`: decode the test split, score it with sacreBLEU."""

from __future__ import annotations

import argparse

from s2s import evaluate
from s2s.config import Params
from s2s.layout import MODEL_FILE
from s2s.stages import stage_main
from s2s.translate import Translator


def _run(args: argparse.Namespace, params: Params) -> None:
    translator = Translator.load(args.model / MODEL_FILE, args.tokenizer, params.train.device)
    evaluate.run(params.evaluate, translator, args.data, args.metrics, args.hypotheses, args.attention)


def main() -> None:
    stage_main("evaluate", _run)


if __name__ == "__main__":
    main()
