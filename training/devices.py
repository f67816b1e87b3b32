"""Where and in which number format the shared loop trains: the device, the torchrun
process group, bf16 autocast (`--amp`) and the machine recorded on the card."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.hardware import bf16_native, cpu_model_name

# --amp: bf16 autocast where the device computes bf16 natively (auto), always (bf16), never (off)
AMP_MODES = ("auto", "bf16", "off")


@dataclass
class DistInfo:
    """This process's place in a torchrun job (1, 0, 0 when run alone)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """'auto' -> cuda if available else cpu; a bare 'cuda' picks this process's local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def setup_distributed(device_name: str = "auto") -> tuple[torch.device, DistInfo]:
    """Read torchrun's env vars, pick the device, and join the process group if world > 1."""
    info = DistInfo(
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    device = select_device(device_name, info.local_rank)
    if info.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, info


def use_amp(mode: str, device: torch.device) -> bool:
    """Whether `--amp mode` trains under bf16 autocast on `device`: auto where the device has
    native bf16 arithmetic (CUDA; CPUs with AMX-BF16 or AVX512-BF16), where it is the faster
    format; elsewhere bf16 is emulated and slower than fp32, so auto keeps fp32 there."""
    if mode not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {mode!r}")
    return mode == "bf16" or (mode == "auto" and bf16_native(device))


def precision(enabled: bool) -> str:
    """The card's name of the training number format."""
    return "bf16 autocast" if enabled else "fp32"


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast (no loss scaling needed, unlike fp16): matrix products and convolutions in
    bf16, weights, gradients, optimiser state and reductions in fp32; a no-op when disabled."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`; channels-last on CUDA, where convolutions run faster in it."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def all_reduce_sum(values: Tensor) -> Tensor:
    """`values` summed over every rank in place (unchanged when run alone)."""
    if dist.is_initialized():
        dist.all_reduce(values)
    return values


def machine_info(device: torch.device, world_size: int) -> dict[str, Any]:
    """Where the run trained, for the card."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()
    return {
        "device": str(device.type),
        "device_name": name or platform.machine(),
        "world_size": world_size,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
