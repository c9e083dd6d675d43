"""Stage `ingest`: raw parallel text -> cleaned splits + per-reason counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from s2s import ingest
from s2s.config import Params
from s2s.stages import stage_main


def _run(args: argparse.Namespace, params: Params) -> None:
    ingest.run(params.ingest, Path.cwd(), args.out, args.stats)


def main() -> None:
    stage_main("ingest", _run)


if __name__ == "__main__":
    main()
