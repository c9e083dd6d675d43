"""DVC stage entry points: each reads its own params and calls the library.

The options and their default paths come from `s2s.layout` (dvc.yaml passes
the same paths explicitly, so DVC shows them); hyperparameters come from
`params.yaml`. Expected failures print one clear line, not a trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from s2s.config import Params, load_params
from s2s.errors import Interrupted, S2SError
from s2s.layout import PARAMS_FILE, stage
from s2s.stage_status import StageStatus


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout, force=True
    )


def stage_main(name: str, body: Callable[[argparse.Namespace, Params], None]) -> None:
    """Parse the stage's paths, load params, run `body`; exit 1 with the error's own message on expected failures.

    A stop or an expected failure is also written as a StageStatus record in the working directory (the workspace
    DVC runs the stage in), for the flow to read.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {stage(name).module}")
    parser.add_argument("--params", default=PARAMS_FILE, help=f"params file (default: {PARAMS_FILE})")
    for flag, path in stage(name).args.items():
        parser.add_argument(flag, type=Path, default=Path(path), help=f"default: {path}")
    args = parser.parse_args()
    setup_logging()
    try:
        body(args, load_params(args.params))
    except Interrupted as err:
        StageStatus(name, "stopped", str(err), resumes=err.resumes).write(Path.cwd())
        logging.getLogger(f"s2s.stages.{name}").warning("%s", err)
        sys.exit(128 + err.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except S2SError as err:
        message = f"{name} stage failed: {err}"
        StageStatus(name, "failed", message, resumes=False).write(Path.cwd())
        logging.getLogger(f"s2s.stages.{name}").error("%s", message)
        sys.exit(1)
