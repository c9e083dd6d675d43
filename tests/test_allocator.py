"""s2s.allocator: train.malloc keep stops glibc handing big blocks back to the kernel between steps."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from s2s import allocator
from s2s.config import ConfigError, parse_params

# In a child process, since the setting lasts for the process's life: allocate, touch and free blocks of 1, 2, ...
# 30 MB, as batches of new lengths make tensors of new sizes, and print the minor page faults that took.
FAULTS = """
import resource, sys, torch
from s2s import allocator
changed = allocator.configure(sys.argv[1], torch.device("cpu"))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for mb in range(1, 31):
    t = torch.empty(mb * 2**20, dtype=torch.uint8).fill_(1)
    del t
print(changed, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    changed, faults = out.stdout.split()
    return changed == "True", int(faults)


def test_auto_keeps_memory_on_cpu_and_leaves_malloc_alone_on_cuda() -> None:
    assert allocator.resolve("auto", torch.device("cpu")) == "keep"
    assert allocator.resolve("auto", torch.device("cuda")) == "system"
    assert allocator.resolve("system", torch.device("cpu")) == "system"
    assert allocator.resolve("keep", torch.device("cuda")) == "keep"


def test_system_changes_nothing() -> None:
    assert allocator.configure("system", torch.device("cpu")) is False
    assert allocator.configure("auto", torch.device("cuda")) is False


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt settings are glibc's")
def test_keep_reuses_freed_blocks_instead_of_faulting_them_in_again() -> None:
    changed, kept = _faults("keep")
    unchanged, system = _faults("system")
    assert changed and not unchanged
    # system: each block is bigger than glibc's adaptive mmap threshold, so a fresh mmap faulted in page by page
    # (465 MB, 119,000 pages); keep: heap memory, reused by the next block, only its growth faulted in.
    assert system > 100_000, system
    assert kept < system / 3, (kept, system)


def test_malloc_setting_is_validated() -> None:
    assert parse_params({"train": {"malloc": "keep"}}).train.malloc == "keep"
    with pytest.raises(ConfigError, match=r"train.malloc: .*got 'jemalloc'"):
        parse_params({"train": {"malloc": "jemalloc"}})
