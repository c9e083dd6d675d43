"""What this machine lends a process: the CPUs it may run on and what they multiply natively (torch-free, so that
data stages and the command line can ask too)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matrix units


def cpu_count() -> int:
    """CPUs this process may use (its affinity mask: a container's or taskset's share, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is not there)."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.is_file() else ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_units(flags: frozenset[str] | None = None) -> tuple[str, ...]:
    """The bf16 matrix units among `flags` (this CPU's by default): empty on a CPU that only emulates bf16."""
    flags = cpu_flags() if flags is None else flags
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)
