"""The float precision training runs its matmuls in, chosen from `train.amp`, the device and the CPU's flags.

bf16 autocast pays where the hardware multiplies bf16 natively: CUDA GPUs with bf16 (Ampere and later) and CPUs
with Intel AMX (`amx_bf16`) or AVX-512 BF16 (`avx512_bf16`), where oneDNN's bf16 matmul runs several times faster
than float32 (BENCHMARKS.md "Precision"). On a CPU without them (AVX2 only) oneDNN converts bf16 to float32 and
back around each kernel, which is slower than float32 itself, so `auto` keeps float32 there. Autocast leaves the
weights, the optimizer state, the loss and softmax in float32: a checkpoint is float32 whatever trained it, and
loads and decodes the same on any machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import torch

from s2s.config import AmpMode
from s2s.machine import BF16_CPU_FLAGS, bf16_units, cpu_flags

log = logging.getLogger(__name__)

# Reported beside a choice: what the CPU offers for matmuls in each precision.
MATMUL_CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                    "amx_bf16", "amx_int8", "amx_fp16")  # fmt: skip


@dataclass(frozen=True)
class Precision:
    """What training runs in and why; written to metrics/train.json and the log."""

    dtype: Literal["float32", "bfloat16"]
    reason: str
    cpu_flags: tuple[str, ...]  # the MATMUL_CPU_FLAGS this machine has, in that order

    @property
    def autocast(self) -> bool:
        return self.dtype == "bfloat16"

    def describe(self) -> str:
        return f"{self.dtype} ({self.reason}; CPU flags: {' '.join(self.cpu_flags) or 'none of note'})"


def choose(amp: AmpMode, device: torch.device, flags: frozenset[str] | None = None, arch: str = "transformer") -> Precision:
    """`train.amp` on `device` for a model of `arch`: auto picks bf16 where the hardware has it natively, float32
    elsewhere."""
    flags = cpu_flags() if flags is None else flags
    present = tuple(f for f in MATMUL_CPU_FLAGS if f in flags)
    units = bf16_units(flags)
    if amp == "off":
        return Precision("float32", "train.amp=off", present)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bfloat16", f"train.amp={amp}: {torch.cuda.get_device_name(device)} has bf16", present)
        if amp == "bf16":
            log.warning("train.amp=bf16: %s has no bf16; training in float32", torch.cuda.get_device_name(device))
        return Precision("float32", "this GPU has no bf16", present)
    if device.type != "cpu":
        return Precision("float32", f"bf16 autocast is not used on {device.type}", present)
    if arch == "rnn":  # autocast sends LSTM/GRU to oneDNN's bf16 RNN primitive, which AVX2 CPUs lack (it raises)
        if amp == "bf16":
            log.warning("train.amp=bf16: recurrent models train in float32 on CPU")
        return Precision("float32", "recurrent models train in float32 on CPU (oneDNN's bf16 RNN kernels are not used)", present)
    if units:
        return Precision("bfloat16", f"train.amp={amp}: the CPU has {' and '.join(units)}", present)
    if amp == "bf16":
        log.warning("train.amp=bf16 on a CPU without %s: bf16 is emulated and slower than float32 here; "
                    "train.amp=auto picks float32 on this CPU", " or ".join(BF16_CPU_FLAGS))  # fmt: skip
        return Precision("bfloat16", f"train.amp=bf16, asked for (the CPU has no {' or '.join(BF16_CPU_FLAGS)})", present)
    return Precision("float32", f"train.amp=auto: the CPU has no {' or '.join(BF16_CPU_FLAGS)}", present)
