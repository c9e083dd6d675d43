"""Stage `evaluate`: decode the test split, score it with sacreBLEU."""

from __future__ import annotations

import argparse
import signal

from s2s import evaluate
from s2s.config import Params
from s2s.errors import Interrupted
from s2s.layout import MODEL_FILE
from s2s.stages import stage_main
from s2s.translate import Translator

STOPPED = "stopped while evaluating the test set; the trained model is kept: run again to evaluate it without training again"


class _StopRequested(BaseException):
    """Raised by the signal handler wherever the stage is. Not an Exception, as KeyboardInterrupt is not: an `except
    Exception` on the way (logging's emit has one, when the signal lands while a line is written) lets it through."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _stop(signum: int, frame: object = None) -> None:
    raise _StopRequested(signum)  # decoding keeps nothing worth saving: stop at once


def _run(args: argparse.Namespace, params: Params) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop)
    try:
        translator = Translator.load(args.model / MODEL_FILE, args.tokenizer, params.train.device)
        evaluate.run(params.evaluate, translator, args.data, args.metrics, args.hypotheses, args.attention)
    except _StopRequested as stop:
        raise Interrupted(stop.signum, STOPPED, resumes=False) from None


def main() -> None:
    stage_main("evaluate", _run)


if __name__ == "__main__":
    main()
