"""AlexNet of Krizhevsky, Sutskever & Hinton, *ImageNet Classification with Deep CNNs* (2012).

Five convolutional layers and three fully connected ones, ReLU after each hidden layer, local
response normalisation after the first two convolutions, overlapping max pooling (3, stride 2)
and dropout 0.5 before the first two fully connected layers.

Two presets share this one module:

* ``alexnet`` (ImageNet, 224x224): the single-tower layer listing torchvision publishes
  (64-192-384-256-256 filters, 4096-4096 units, ~61.1M parameters for 1000 classes), with the
  paper's LRN switchable (torchvision's published weights were trained without it).
* ``alexnet-small`` (CIFAR-10, 28x28 crops of 32x32 images): same design, sizes that fit the
  input. Differences from ImageNet's network, each forced by the 7x smaller input:
    - conv1 is 5x5 stride 1 pad 2 instead of 11x11 stride 4 pad 2 (an 11x11/4 filter would
      leave a 6x6 map after the first layer);
    - the last pooling leaves 2x2x256, so the average pool goes to 2x2, not 6x6;
    - fully connected layers have 1024 units instead of 4096 (1024 inputs, and the checkpoint
      stays under 25 MB);
    - training crops are 28x28 of 32x32 images: the paper's 224/256 ratio, exactly.

LRN: the paper divides by (k + alpha * sum a^2)^beta with k=2, n=5, alpha=1e-4, beta=0.75
(torch's LocalResponseNorm divides alpha by n; ours, below, does not).
Shapes: B batch, C channels, H/W spatial, N classes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AlexNetConfig:
    """Architecture of one AlexNet; stored verbatim in the model card."""

    num_classes: int = 1000
    in_channels: int = 3
    widths: tuple[int, int, int, int, int] = (64, 192, 384, 256, 256)
    conv1_kernel: int = 11
    conv1_stride: int = 4
    conv1_padding: int = 2
    conv2_kernel: int = 5
    pool_size: int = 6  # adaptive average pool output side before the classifier
    hidden: int = 4096
    dropout: float = 0.5
    lrn: bool = True
    lrn_size: int = 5
    lrn_alpha: float = 1e-4  # the paper's alpha (not divided by n)
    lrn_beta: float = 0.75
    lrn_k: float = 2.0
    # "paper": every weight N(0, 0.01), biases 1 in conv2/4/5 and fc6/7, else 0.
    # "kaiming": He-normal weights, biases 0 (fc8 N(0, 0.01)); trains from the first epoch.
    init: Literal["paper", "kaiming"] = "kaiming"

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # type: ignore[assignment]
        if len(self.widths) != 5:
            raise ValueError("AlexNet has exactly five convolutional layers")
        if self.num_classes < 1:
            raise ValueError("num_classes must be positive")
        if self.init not in ("paper", "kaiming"):
            raise ValueError(f"init must be 'paper' or 'kaiming', got {self.init!r}")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d


PRESETS: dict[str, AlexNetConfig] = {
    "alexnet": AlexNetConfig(),
    "alexnet-small": AlexNetConfig(
        num_classes=10, conv1_kernel=5, conv1_stride=1, conv1_padding=2, pool_size=2, hidden=1024
    ),
}


def _window_sum(t: Tensor, before: int, after: int) -> Tensor:
    """out[:, c] = sum of t[:, c - before : c + after + 1] over channels (zero outside)."""
    c = t.shape[1]
    p = F.pad(t, (0, 0, 0, 0, before, after))
    if before + after == 0:
        return p.clone()
    w = p[:, 0:c] + p[:, 1 : c + 1]
    for i in range(2, before + after + 1):
        w += p[:, i : c + i]
    return w


def _inv_pow(d: Tensor, beta: float) -> Tensor:
    """d ** -beta; the paper's beta = 0.75 as rsqrt(d * sqrt(d)), 3x cheaper than pow on CPU."""
    if beta == 0.75:
        return torch.rsqrt(d * d.sqrt())
    if beta == 0.5:
        return torch.rsqrt(d)
    return d.pow(-beta)


def _lrn_scale(
    acc: Tensor, size: int, alpha: float, beta: float, k: float
) -> tuple[Tensor, Tensor]:
    """d = k + alpha * S(a^2) and r = d^-beta, of float32 (or wider) activations `acc`."""
    d = _window_sum(acc.square(), size // 2, (size - 1) // 2).mul_(alpha).add_(k)
    return d, _inv_pow(d, beta)


# Activations per slice of the batch in `_lrn_inference`: a slice's temporaries are small
# allocations the allocator hands back and reuses, and stay in cache between the passes.
_LRN_SLICE_BYTES = 2**20


def _lrn_inference(x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
    """LRN's forward with no graph, on the CPU: a few images at a time, into one output.

    The whole batch at once allocates each temporary at the full activation size (25 MB per
    batch of 32 after the ImageNet preset's conv1), and allocations that large come back from
    the kernel as fresh pages every time. One thread of a 2-core AMD EPYC (Zen 5): the ImageNet
    preset's forward at batch 32 took 317 ms with the whole batch at once, 228 ms sliced
    (batch 16: 131 and 123 ms). `python -m benchmarks.experiments.lrn` times LRN alone both ways.
    """
    acc_dtype = torch.promote_types(x.dtype, torch.float32)
    per_image = math.prod(x.shape[1:]) * acc_dtype.itemsize  # also for an empty batch
    step = max(1, _LRN_SLICE_BYTES // max(per_image, 1))
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], step):
        acc = x[i : i + step].to(acc_dtype)
        torch.mul(acc, _lrn_scale(acc, size, alpha, beta, k)[1], out=out[i : i + step])
    return out


class _LRNFunction(torch.autograd.Function):
    """b = a * d^-beta, d = k + alpha * S(a^2); S sums a window of `size` channels.

    Backward by hand: da_j = g_j r_j - 2 alpha beta a_j * S^T(g a r / d)_j with r = d^-beta
    and S^T the window mirrored. Autograd through the forward's ops took 3x longer: 18% of an
    alexnet-small training step on one CPU thread (batch 128) went to LRN, 6% with this.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, alpha: float, beta: float, k: float) -> Tensor:
        acc = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32
        d, r = _lrn_scale(acc, size, alpha, beta, k)
        ctx.save_for_backward(acc, d, r)
        ctx.hyper = (size, alpha, beta)
        return (acc * r).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None, None]:
        acc, d, r = ctx.saved_tensors
        size, alpha, beta = ctx.hyper
        gr = g.to(acc.dtype) * r
        t = _window_sum(gr * acc / d, (size - 1) // 2, size // 2)  # the mirrored window
        gx = gr.sub_(t.mul_(acc).mul_(2.0 * alpha * beta))
        return gx.to(g.dtype), None, None, None, None


class LocalResponseNorm(nn.Module):
    """The paper's LRN across channels: b_c = a_c / (k + alpha * sum_{|j-c| <= n/2} a_j^2)^beta.

    Same function as torch.nn.LocalResponseNorm(n, alpha * n, beta, k) (window of n channels,
    n // 2 before and (n - 1) // 2 after), computed as n - 1 shifted adds with a hand-written
    backward: on CPU 4-10x faster forward and 7-9x faster forward + backward than torch's
    3-D average pool, in either memory format (timings: `python -m benchmarks.experiments.lrn`). The
    window sum is taken in float32 even under bf16 autocast.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        if (
            x.device.type == "cpu"
            and not (torch.is_grad_enabled() and x.requires_grad)
            # traced by torch.compile, the slices' loop would specialise on every batch size
            and not torch.compiler.is_compiling()
        ):
            return _lrn_inference(x, self.size, self.alpha, self.beta, self.k)
        out: Tensor = _LRNFunction.apply(x, self.size, self.alpha, self.beta, self.k)
        return out

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def _lrn(c: AlexNetConfig) -> nn.Module:
    if not c.lrn:
        return nn.Identity()
    return LocalResponseNorm(c.lrn_size, alpha=c.lrn_alpha, beta=c.lrn_beta, k=c.lrn_k)


class AlexNet(nn.Module):
    """AlexNet with named layers; `forward_features` and `forward_head` split as in timm."""

    def __init__(self, config: AlexNetConfig) -> None:
        super().__init__()
        self.config = c = config
        w1, w2, w3, w4, w5 = c.widths
        relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
        pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2)  # noqa: E731  overlapping pooling
        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(c.in_channels, w1, c.conv1_kernel, c.conv1_stride, c.conv1_padding),
                relu1=relu(),
                norm1=_lrn(c),
                pool1=pool(),
                conv2=nn.Conv2d(w1, w2, c.conv2_kernel, padding=c.conv2_kernel // 2),
                relu2=relu(),
                norm2=_lrn(c),
                pool2=pool(),
                conv3=nn.Conv2d(w2, w3, 3, padding=1),
                relu3=relu(),
                conv4=nn.Conv2d(w3, w4, 3, padding=1),
                relu4=relu(),
                conv5=nn.Conv2d(w4, w5, 3, padding=1),
                relu5=relu(),
                pool5=pool(),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(c.pool_size)
        self.classifier = nn.Sequential(
            OrderedDict(
                drop6=nn.Dropout(c.dropout),
                fc6=nn.Linear(w5 * c.pool_size * c.pool_size, c.hidden),
                relu6=relu(),
                drop7=nn.Dropout(c.dropout),
                fc7=nn.Linear(c.hidden, c.hidden),
                relu7=relu(),
                fc8=nn.Linear(c.hidden, c.num_classes),
            )
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as `config.init` says.

        "paper" is the paper's scheme: N(0, 0.01) everywhere, biases 1 in conv2, conv4, conv5
        and the hidden FC layers so their ReLUs start on positive inputs. With 0.01 weights each
        layer scales its input's signal by ~0.01 * sqrt(fan_in), so fc6/fc7 start out emitting
        little more than their bias and the network's output hardly depends on its input: on
        CIFAR-10 alexnet-small stayed at chance loss (2.32) through its whole first epoch.
        "kaiming" (the default) keeps every layer's activation scale (He et al. 2015) and trains
        from the first steps; the architecture is unchanged.
        """
        paper = self.config.init == "paper"
        for name, m in self.named_modules():
            if not isinstance(m, nn.Conv2d | nn.Linear) or m.bias is None:
                continue
            if paper:
                nn.init.normal_(m.weight, 0.0, 0.01)
                ones = name.endswith(("conv2", "conv4", "conv5", "fc6", "fc7"))
                nn.init.constant_(m.bias, 1.0 if ones else 0.0)
            elif name.endswith("fc8"):
                nn.init.normal_(m.weight, 0.0, 0.01)  # small logits: softmax starts near uniform
                nn.init.zeros_(m.bias)
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised image -> (B, w5, pool_size, pool_size)."""
        return self.avgpool(self.features(x))

    def forward_head(self, x: Tensor) -> Tensor:
        """Pooled features -> class logits (B, N)."""
        return self.classifier(torch.flatten(x, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# torchvision.models.alexnet's state-dict keys -> ours (its Sequential indices, no LRN).
TORCHVISION_KEYS = {
    "features.0": "features.conv1",
    "features.3": "features.conv2",
    "features.6": "features.conv3",
    "features.8": "features.conv4",
    "features.10": "features.conv5",
    "classifier.1": "classifier.fc6",
    "classifier.4": "classifier.fc7",
    "classifier.6": "classifier.fc8",
}


def convert_torchvision_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename torchvision AlexNet weights to this module's layer names."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix, _, param = key.rpartition(".")
        if prefix not in TORCHVISION_KEYS:
            raise KeyError(f"unexpected key in torchvision AlexNet state dict: {key!r}")
        out[f"{TORCHVISION_KEYS[prefix]}.{param}"] = value
    return out
