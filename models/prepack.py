"""Fully connected layers packed once into oneDNN's weight layout, for float32 CPU inference.

`nn.Linear` on the CPU calls the BLAS sgemm of the torch build (MKL in the x86 wheels) on
every forward. On the AMD EPYC machines this project is measured on (family 26, AVX-512) that
is slow at the small batches a server runs: fc6-fc8 took a third of the full-size AlexNet's
forward at batch 8 on one thread. oneDNN's kernels, which torch also ships, given the weight
reordered once into their blocked layout (the packing `torch.compile` does when it freezes a
CPU model), run the same layers in under half the time: the whole forward went from 66 to 53 ms
at batch 8 and from 239 to 214 ms at batch 32 (benchmarks/results/prepack-cpu-1thread.json;
`python -m benchmarks.prepack` measures it on the machine at hand, Intel CPUs included, where
MKL may do better). Tiny layers (the VAEs') lose some 30 microseconds per call at batch 1 and
gain from batch 8 on.

The packed layer is inference only: it keeps the bias and the packed weight, not the dense
weight (the full AlexNet would hold its 234 MB of fc weights twice), so it has no state_dict
to save, cannot train, and raises when its input needs a gradient. Results are float32 and
agree with `nn.Linear` to rounding (the sums run in another order): within 4e-6 on the
AlexNets' logits and the VAEs' outputs in the file above.
"""

from __future__ import annotations

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
        if x.requires_grad:
            raise RuntimeError("PackedLinear is for inference: run it under torch.inference_mode()")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN"


def prepack_linear(model: nn.Module, min_weights: int = 0) -> int:
    """Replace, in place, every `nn.Linear` of an eval-mode float32 CPU model holding at least
    `min_weights` weights by a `PackedLinear`; returns how many were replaced (0 where the build
    or the device cannot pack)."""
    if model.training:
        raise ValueError("prepack_linear is for inference: call model.eval() first")
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
        and child.weight.numel() >= min_weights
        and can_prepack(child.weight.device, child.weight.dtype)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedLinear(child))
    return len(targets)
