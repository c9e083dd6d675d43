"""The one linter/formatter, as configured in pyproject.toml, is clean."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_check_and_format() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(RUFF), *args], cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
