"""Fully connected layers packed once into oneDNN's weight layout, for float32 CPU inference.

`nn.Linear` on the CPU calls the BLAS sgemm of the torch build (MKL in the x86 wheels) on
every forward. On the AMD EPYC machines this project is measured on (family 26, AVX-512) that
is slow at the small batches a server runs: under load at c=16 (two lanes, batches of ~8),
`Linear.forward` had 31% of the inference threads' samples
(benchmarks/results/profile-full-classify-c16-l2.txt). oneDNN's kernels, which torch also
ships, given the weight reordered once into their blocked layout, run the same layers in under
half the time: the whole forward went from 66 to 53 ms at batch 8 and from 239 to 214 ms at
batch 32 (benchmarks/results/prepack-cpu-1thread.json; `python -m benchmarks.prepack` measures
it on the machine at hand, Intel CPUs included, where MKL may do better). The small layers of
the shipped VAEs lose 10-30 microseconds per call at batch 1; vae-mnist gains 1.3-1.7x from
batch 8 on, vae-frey only at batch 32 (1.1-1.4x). (torch.compile packs weights only with
freezing on, and float32 ones for MKL, so the service does not pack under compile.)

The packed layer is inference only: it keeps the bias and the packed weight, not the dense
weight (the full AlexNet would hold its 234 MB of fc weights twice). It has no state_dict to
save, cannot be copied, moved or converted (each raises, naming the fix: do it before
packing), and raises when its input needs a gradient while autograd records. Results are
float32 and agree with `nn.Linear` to rounding (the sums run in another order): within 4.3e-6
on the outputs of the models in the file above.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def can_prepack(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build packs weights for `device` and `dtype`: float32 on a CPU with
    oneDNN (mkldnn) compiled in."""
    return (
        torch.device(device).type == "cpu"
        and dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


_INFERENCE_ONLY = "a PackedLinear holds an opaque oneDNN weight"


class PackedLinear(nn.Module):
    """An `nn.Linear` whose weight is packed for oneDNN; same inputs and outputs, inference only."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        if not can_prepack(w.device, w.dtype):
            raise ValueError(f"cannot pack a {w.dtype} weight on {w.device} with this torch")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # (out, in) in oneDNN's blocked layout, chosen for no particular batch size.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
        # A parameter, so `next(model.parameters())` still names the model's device and dtype.
        self.bias = (
            nn.Parameter(linear.bias.detach(), requires_grad=False)
            if linear.bias is not None
            else None
        )

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference: run it under torch.inference_mode()")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    # The packed weight is an opaque oneDNN tensor: it has no storage to save or copy, and
    # .to()/.double() would convert the bias alone. Fail loudly instead of half-working.
    def _save_to_state_dict(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(_INFERENCE_ONLY + "; save the model before prepack_linear")

    def _apply(self, *args: Any, **kwargs: Any) -> PackedLinear:
        raise RuntimeError(_INFERENCE_ONLY + "; move or convert the model before prepack_linear")

    def __deepcopy__(self, memo: dict[int, Any]) -> PackedLinear:
        raise RuntimeError(_INFERENCE_ONLY + "; copy the model before prepack_linear")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def prepack_linear(model: nn.Module, min_weights: int = 0) -> int:
    """Replace, in place, every `nn.Linear` of an eval-mode float32 CPU model holding at least
    `min_weights` weights by a `PackedLinear`; returns how many were replaced (0 where the build
    or the device cannot pack)."""
    if model.training:
        raise ValueError("prepack_linear is for inference: call model.eval() first")
    # Every place a layer sits, repeats included, so that a layer held under two names (tied)
    # becomes one packed layer under both.
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent._modules.items()
        if type(child) is nn.Linear
        and child.weight.numel() >= min_weights
        and can_prepack(child.weight.device, child.weight.dtype)
    ]
    packed: dict[int, PackedLinear] = {}
    for parent, name, child in targets:
        if id(child) not in packed:
            packed[id(child)] = PackedLinear(child)
        setattr(parent, name, packed[id(child)])
    return len(packed)
