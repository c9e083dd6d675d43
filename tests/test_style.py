"""Style held by tests: ruff as configured in pyproject.toml, and units small enough to read (functions, the Trainer, flows/)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).parent / "ruff"


def test_ruff_check_and_format() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run([str(RUFF), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr


def _definitions(root: Path) -> list[tuple[str, int, bool]]:
    """(file:line name, lines, is_class) of every function and class under `root`."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                span = (node.end_lineno or node.lineno) - node.lineno + 1
                out.append((f"{path.relative_to(REPO)}:{node.lineno} {node.name}", span, isinstance(node, ast.ClassDef)))
    return out


def test_small_units() -> None:
    """No function over 60 lines, a Trainer under 200, and flows/ (orchestration only) under 900 lines in all."""
    for package in ("s2s", "flows", "ops"):
        long = [(name, span) for name, span, is_class in _definitions(REPO / package) if not is_class and span > 60]
        assert not long, f"functions over 60 lines: {long}"
    [trainer] = [span for name, span, _ in _definitions(REPO / "s2s") if name.endswith(" Trainer")]
    assert trainer < 200
    assert sum(len(p.read_text().splitlines()) for p in (REPO / "flows").glob("*.py")) < 900
