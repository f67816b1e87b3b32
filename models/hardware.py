"""What the machine's processors can do, read once where training and serving choose a number
format: bf16 runs on CUDA devices that support it and on CPUs with matrix or vector bf16
instructions (AMX-BF16, AVX512-BF16); elsewhere bf16 is emulated and slower than float32."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flags of native bf16 arithmetic on x86: AMX tiles, AVX-512 dot products
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_fields(cpuinfo: Path = CPUINFO) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ("model name", "cpu family", "flags", ...);
    empty where there is no such file."""
    fields: dict[str, str] = {}
    try:
        with cpuinfo.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_model_name() -> str:
    """The processor's marketing name ("AMD EPYC 7B13"), not just the architecture."""
    return cpu_fields().get("model name") or platform.processor()


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The native bf16 instruction sets this CPU reports (a subset of `BF16_CPU_FLAGS`)."""
    flags = set(cpu_fields(cpuinfo).get("flags", "").split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def bf16_native(device: torch.device, cpuinfo: Path = CPUINFO) -> bool:
    """Whether `device` runs bf16 arithmetic natively: a CUDA device that supports it, or a CPU
    with AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_bf16_flags(cpuinfo))
    return False
