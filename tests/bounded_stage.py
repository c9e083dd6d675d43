"""Run a stage, or a control, with its address space bounded to what it had after its imports plus a budget.

`python bounded_stage.py MB TARGET [ARGS...]` in a workspace. TARGET is a stage module (its `main()` is run, its
imports done before the bound is set, so the budget is what the work itself may take), or a control that holds the
training split the way s2s did before it streamed (`lines`: both prepared files as lists of lines; `ids`: every
item's subword ids as lists, as training used to at start-up). It prints the address space the run grew by, in MB.
"""

from __future__ import annotations

import importlib
import resource
import sys
from pathlib import Path


def vm(field: str) -> int:
    """A /proc/self/status figure (VmSize, VmPeak) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def main() -> None:
    budget, target, args = int(sys.argv[1]) << 20, sys.argv[2], sys.argv[3:]
    from s2s import layout
    from s2s.tokenizer import Tokenizers

    module = importlib.import_module("s2s.train" if target == "ids" else target if target != "lines" else "s2s.ingest")
    base = vm("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (base + budget, base + budget))
    try:
        if target == "lines":
            held = [(Path(layout.PREPARED_DIR) / f"train.{side}").read_text(encoding="utf-8").split("\n")
                    for side in layout.SIDES]  # fmt: skip
            print(f"held {sum(map(len, held))} lines")
        elif target == "ids":
            tok = Tokenizers.load(Path(layout.TOKENIZER_DIR))
            lines = [list(layout.iter_lines(Path(layout.PREPARED_DIR) / f"train.{side}")) for side in layout.SIDES]
            held = [tok.encode_src(lines[0]), tok.encode_tgt(lines[1])]
            print(f"held {sum(map(len, held))} id lists")
        else:
            sys.argv = [target, *args]
            module.main()
    finally:
        print(f"grew {(vm('VmPeak') - base) / 2**20:.0f} MB", file=sys.stderr)


if __name__ == "__main__":
    main()
