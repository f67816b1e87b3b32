"""Fully connected layers packed once into oneDNN's weight layout, for CPU inference in float32
or bfloat16 (on CPUs with native bf16, `models.hardware.bf16_native`; `models.precision`).

`nn.Linear` on the CPU calls the BLAS sgemm of the torch build (MKL in the x86 wheels) on
every forward; oneDNN's kernels, which torch also ships, run the same layer on a weight
reordered once into their blocked layout. Which is faster depends on the CPU, the layer and
the batch size:

* On an AMD EPYC (family 26, AVX-512), sgemm is slow at the small batches a server runs:
  `Linear.forward` takes 31% of the inference threads' samples under load at c=16
  (benchmarks/results/profile-full-classify-c16-l2.txt), and with every layer packed the
  224x224 AlexNet's forward runs 53 ms instead of 66 at batch 8 and 214 instead of 239 at
  batch 32 (benchmarks/results/prepack-cpu-1thread.json).
* On an Intel Xeon with AVX-512 and AMX (family 6 model 167, one thread), MKL is faster at
  batch 1 for every layer (fc6: 8.1 against 10.2 ms) and for small layers at any batch (the
  VAEs' 500->20: 6-16 against 20-29 microseconds), while oneDNN is faster from batch 4 for the
  large layers (fc6 at batch 8: 13.1 against 25.0 ms;
  benchmarks/results/prepack-cpu-1thread-xeon.json).

`python -m benchmarks.experiments.prepack` measures it on the machine at hand. So
`prepack_linear(model, rows=...)` times each layer both ways at the batch sizes the caller will
run (`packing_threshold`) and packs it only where oneDNN wins: a layer where it never wins
stays an `nn.Linear`; one where it wins from some batch size up keeps its dense weight for the
smaller batches (`dense_below`), at the cost of holding that layer's weights twice. Without
`rows` every layer is packed, dense weight dropped. (torch.compile packs weights only with
freezing on, and float32 ones for MKL, so the service does not pack under compile.)

The packed layer is inference only: unless it keeps a dense weight for small batches, it keeps
the bias and the packed weight, not the dense weight (the full AlexNet would hold its 234 MB of
fc weights twice). It has no state_dict to save, cannot be copied, moved or converted (each
raises, naming the fix: do it before packing), and raises when its input needs a gradient
while autograd records. Results are in the weight's format and agree with `nn.Linear` to
rounding (the sums run in another order): within 4.3e-6 on the shipped models' float32 outputs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.hardware import bf16_native


def can_prepack(device: torch.device | str, dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build packs weights for `device` and `dtype`: float32, or bfloat16
    where the CPU has native bf16 instructions, on a CPU with oneDNN (mkldnn) compiled in."""
    device = torch.device(device)
    return (
        device.type == "cpu"
        and (dtype == torch.float32 or (dtype == torch.bfloat16 and bf16_native(device)))
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


_INFERENCE_ONLY = "a PackedLinear holds an opaque oneDNN weight"


class PackedLinear(nn.Module):
    """An `nn.Linear` whose weight is packed for oneDNN; same inputs and outputs, inference only."""

    def __init__(self, linear: nn.Linear, dense_below: int = 0) -> None:
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
        self.run_dense_below(dense_below, linear)

    def run_dense_below(self, rows: int, linear: nn.Linear) -> None:
        """Inputs of fewer than `rows` rows run on `linear`'s dense weight, kept from now on
        (when rows > 1): where the BLAS sgemm beats oneDNN at small batches
        (`packing_threshold`)."""
        self.dense_below = rows
        self.dense = linear.weight.detach() if rows > 1 else None

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError("PackedLinear is for inference: run it under torch.inference_mode()")
        if self.dense is not None and x.numel() < self.dense_below * self.in_features:
            return F.linear(x, self.dense, self.bias)
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
        dense = f", dense below {self.dense_below} rows" if self.dense is not None else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, packed=oneDNN{dense}"


def threshold_from_timings(
    rows: Sequence[int], dense_ms: Sequence[float], packed_ms: Sequence[float], margin: float
) -> int | None:
    """The fewest rows from which the packed layer was faster by more than `margin` (a
    fraction) at every measured row count from there up; None when it never was."""
    threshold = None
    for r, d, p in sorted(zip(rows, dense_ms, packed_ms, strict=True), reverse=True):
        if p >= d * (1 - margin):
            break
        threshold = r
    return threshold


def _median_ms(fn: Callable[[Tensor], Tensor], x: Tensor, repeat: int) -> float:
    fn(x)  # first call: allocations, oneDNN's primitive cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def packing_threshold(
    linear: nn.Linear,
    rows: Sequence[int],
    packed: PackedLinear | None = None,
    repeat: int = 5,
    margin: float = 0.05,
) -> int | None:
    """Time `linear` dense and packed (`packed`, or a packing made here) at each row count
    (random input, the calling thread's torch thread count, median of `repeat` calls), and
    return from how many rows on packing pays (`threshold_from_timings`); None where it does
    not."""
    packed = packed if packed is not None else PackedLinear(linear)
    gen = torch.Generator().manual_seed(0)
    dense_ms, packed_ms = [], []
    with torch.inference_mode():
        for r in rows:
            x = torch.randn(r, linear.in_features, generator=gen).to(linear.weight.dtype)
            dense_ms.append(_median_ms(linear, x, repeat))
            packed_ms.append(_median_ms(packed, x, repeat))
    return threshold_from_timings(rows, dense_ms, packed_ms, margin)


def serving_rows(max_batch_size: int) -> list[int]:
    """The batch sizes `prepack_linear` times a layer at: 1, powers of two, the largest."""
    rows = {1, max_batch_size}
    r = 2
    while r < max_batch_size:
        rows.add(r)
        r *= 2
    return sorted(rows)


def _pack(linear: nn.Linear, rows: Sequence[int] | None) -> PackedLinear | None:
    """`linear` packed; with `rows`, only where that pays (None where it never does). The
    weight is reordered once (a quarter of a second for the full AlexNet's fc6): the packing
    timed is the one kept."""
    packed = PackedLinear(linear)
    if not rows:
        return packed
    threshold = packing_threshold(linear, rows, packed)
    if threshold is None:
        return None
    if threshold > min(rows):
        packed.run_dense_below(threshold, linear)
    return packed


def prepack_linear(
    model: nn.Module, min_weights: int = 0, rows: Sequence[int] | None = None
) -> int:
    """Replace, in place, every `nn.Linear` of an eval-mode CPU model (float32, or bfloat16
    where `can_prepack` allows) holding at least `min_weights` weights by a `PackedLinear`;
    returns how many were replaced (0 where the build or the device cannot pack).

    With `rows` (the batch sizes the model will run, e.g. `serving_rows(32)`), each layer is
    timed first (`packing_threshold`): one that runs no faster packed stays as it is, one that
    does only from some batch size up keeps its dense weight for smaller batches."""
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
    packed: dict[int, PackedLinear | None] = {}
    for parent, name, child in targets:
        if id(child) not in packed:
            packed[id(child)] = _pack(child, rows)
        layer = packed[id(child)]
        if layer is not None:
            setattr(parent, name, layer)
    return sum(layer is not None for layer in packed.values())


def packing_summary(model: nn.Module) -> dict[str, str]:
    """Each fully connected layer's kernel by name: "oneDNN", "oneDNN from N rows" (dense
    below) or "dense"; for a log line or a report."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, PackedLinear):
            out[name] = f"oneDNN from {m.dense_below} rows" if m.dense is not None else "oneDNN"
        elif type(m) is nn.Linear:
            out[name] = "dense"
    return out
