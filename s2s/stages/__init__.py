"""DVC stage entry points: each reads its own params section and calls the library.

Paths come from the command line (they live in `dvc.yaml`); hyperparameters
come from `params.yaml`. Expected failures print one clear line, not a trace.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from s2s.config import Params, load_params
from s2s.errors import S2SError


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout, force=True
    )


def stage_main(
    name: str, add_args: Callable[[argparse.ArgumentParser], None], body: Callable[[argparse.Namespace, Params], None]
) -> None:
    """Parse paths, load params, run `body`; exit 1 with the error's own message on expected failures."""
    parser = argparse.ArgumentParser(prog=f"s2s stage {name}")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    add_args(parser)
    args = parser.parse_args()
    setup_logging()
    try:
        body(args, load_params(args.params))
    except S2SError as err:
        logging.getLogger(f"s2s.stages.{name}").error("%s stage failed: %s", name, err)
        sys.exit(1)
