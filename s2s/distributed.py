"""Data-parallel training on many processes: launching `torchrun`, joining its process group, a few collectives.

The train stage re-executes itself under `torchrun` when `train.distributed`
asks for more than one process; each worker then finds its rank in the
environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, ...). Rank 0 alone
reads and writes files; what the other ranks need from it (a resume state, a
validation result, a stop decision) comes by broadcast, so all ranks take the
same decisions at the same step. Knows nothing of DVC, Prefect or MLflow.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from s2s.config import DistributedConfig
from s2s.machine import cpu_count

log = logging.getLogger(__name__)

T = TypeVar("T")

# Rank 0 validates alone while the others wait in a broadcast: allow a long validation before calling it a hang.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; the default is a run on one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: T) -> T:
        """Rank 0's `obj` on every rank (pickled; for small objects and whole resume states alike)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def in_worker() -> bool:
    """True inside a process that torchrun started (it sets TORCHELASTIC_RUN_ID for its workers)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def nproc_per_node(cfg: DistributedConfig) -> int:
    if cfg.nproc_per_node == "auto":
        return max(torch.cuda.device_count(), 1)
    return cfg.nproc_per_node


def needs_launch(cfg: DistributedConfig) -> bool:
    """More than one process is asked for, and this is not already one of them."""
    return (nproc_per_node(cfg) > 1 or cfg.nnodes > 1) and not in_worker()


def torchrun_args(cfg: DistributedConfig) -> list[str]:
    """torchrun's options for `cfg`: a standalone group on one machine, a static rendezvous at node 0 across many."""
    args = [f"--nproc-per-node={nproc_per_node(cfg)}"]
    if cfg.nnodes == 1:
        return [*args, "--standalone"]  # a free local port: two runs on one machine cannot collide
    # Static rendezvous: node_rank fixes where each rank runs, so global rank 0 (the writer) is on node 0.
    return [
        *args,
        f"--nnodes={cfg.nnodes}",
        f"--node-rank={cfg.node_rank}",
        "--rdzv-backend=static",
        f"--rdzv-endpoint={cfg.rdzv_endpoint}",
    ]


def launch(cfg: DistributedConfig, module: str, argv: list[str]) -> None:
    """Replace this process with `torchrun ... -m module argv`: killing it kills the run (its workers follow)."""
    command = [sys.executable, "-m", "torch.distributed.run", *torchrun_args(cfg), "-m", module, *argv]
    # torchrun would set 1 thread per worker (with a banner); the ranks set their own share, this only says it.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // nproc_per_node(cfg))))
    log.info("launching %s", " ".join(command))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)


def _die_with_parent(interval: float = 0.5) -> None:
    """Kill this worker once its launcher is gone (a SIGKILLed torchrun cannot stop its workers itself)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="s2s-parent-watch", daemon=True).start()


def init(device: str) -> World:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); a plain one-process World outside torchrun."""
    if not in_worker():
        return World()
    env = os.environ
    world = World(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), int(env["LOCAL_WORLD_SIZE"]))
    if not world.enabled:
        return world
    _die_with_parent()
    cuda = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise RuntimeError("train.device is cuda but CUDA is not available")
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    if not world.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # one copy of the progress log: rank 0's
    log.info("process group: %d processes (%s), %d on this machine", world.world_size, dist.get_backend(), world.local_world_size)
    return world


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: list[T], index: int, parts: int) -> list[T]:
    """Part `index` of `parts` disjoint, interleaved parts (interleaving spreads a length-sorted batch evenly)."""
    return items[index::parts]
