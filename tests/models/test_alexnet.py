"""AlexNet: the paper's layer sizes, both presets' shapes, LRN by hand, pooling and dropout."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from models.alexnet import PRESETS, AlexNet, AlexNetConfig, LocalResponseNorm, _LRNFunction

# Parameters (weights + biases) per layer of the ImageNet network with 1000 classes.
IMAGENET_COUNTS = {
    "features.conv1": 23_296,  # 11*11*3*64 + 64
    "features.conv2": 307_392,  # 5*5*64*192 + 192
    "features.conv3": 663_936,  # 3*3*192*384 + 384
    "features.conv4": 884_992,  # 3*3*384*256 + 256
    "features.conv5": 590_080,  # 3*3*256*256 + 256
    "classifier.fc6": 37_752_832,  # 9216*4096 + 4096
    "classifier.fc7": 16_781_312,  # 4096*4096 + 4096
    "classifier.fc8": 4_097_000,  # 4096*1000 + 1000
}


def _meta(config: AlexNetConfig) -> AlexNet:
    """The network without allocating its weights: shapes and counts only."""
    with torch.device("meta"):
        return AlexNet(config)


def test_imagenet_per_layer_parameter_counts() -> None:
    model = _meta(PRESETS["alexnet"])
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_modules()}
    assert {k: counts[k] for k in IMAGENET_COUNTS} == IMAGENET_COUNTS
    assert sum(p.numel() for p in model.parameters()) == 61_100_840 == sum(IMAGENET_COUNTS.values())


def test_imagenet_preset_shapes() -> None:
    model = _meta(PRESETS["alexnet"])
    x = torch.empty(2, 3, 224, 224, device="meta")
    assert model.forward_features(x).shape == (2, 256, 6, 6)
    assert model(x).shape == (2, 1000)
    # the 224 network computed for real, with a small classifier so it stays fast
    small_head = AlexNet(dataclasses.replace(PRESETS["alexnet"], hidden=16, num_classes=7)).eval()
    out = small_head(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("side", [28, 32])
def test_small_preset_shapes(side: int) -> None:
    model = AlexNet(PRESETS["alexnet-small"]).eval()
    x = torch.randn(4, 3, side, side)
    features = model.forward_features(x)
    assert features.shape == (4, 256, 2, 2)
    logits = model.forward_head(features)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    assert torch.equal(logits, model(x))


def test_lrn_switch_changes_the_module_and_the_output() -> None:
    on = AlexNet(dataclasses.replace(PRESETS["alexnet-small"], lrn=True)).eval()
    off = AlexNet(dataclasses.replace(PRESETS["alexnet-small"], lrn=False)).eval()
    for name in ("norm1", "norm2"):
        assert isinstance(getattr(on.features, name), LocalResponseNorm)
        assert isinstance(getattr(off.features, name), nn.Identity)
    off.load_state_dict(on.state_dict())  # LRN has no parameters: same keys, same weights
    x = torch.randn(2, 3, 28, 28)
    assert not torch.allclose(on(x), off(x))


def _lrn_by_hand(a: torch.Tensor, n: int, k: float, alpha: float, beta: float) -> torch.Tensor:
    """b_c = a_c / (k + alpha * sum_{j=max(0, c-n/2)}^{min(C-1, c+n/2)} a_j^2)^beta, the paper."""
    channels = a.shape[1]
    out = torch.empty_like(a)
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
        window = (a[:, lo : hi + 1] ** 2).sum(1)
        out[:, c] = a[:, c] / (k + alpha * window) ** beta
    return out


def test_lrn_is_the_papers_formula() -> None:
    # magnitude ~50 so alpha * sum a^2 (~ 1e-4 * 5 * 2500 ~ 1) is comparable to k = 2
    a = (
        torch.randn(2, 9, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        * 50
    )
    c = AlexNetConfig()
    lrn = LocalResponseNorm(c.lrn_size, alpha=c.lrn_alpha, beta=c.lrn_beta, k=c.lrn_k)
    expected = _lrn_by_hand(a, n=5, k=2.0, alpha=1e-4, beta=0.75)
    assert (expected / a).min() < 0.8, "normalisation is visibly active"
    assert torch.allclose(lrn(a), expected, rtol=1e-12)
    # torch's own LRN divides alpha by n: the paper's alpha needs alpha * n there
    reference = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)(a.float())
    assert torch.allclose(lrn(a.float()), reference, rtol=1e-5)


@pytest.mark.parametrize("size", [5, 4, 3, 1])
@pytest.mark.parametrize("beta", [0.75, 0.5, 0.6])
def test_lrn_matches_torch_and_its_gradient_is_exact(size: int, beta: float) -> None:
    # the hand-written backward against finite differences, every window size and beta branch
    a = torch.rand(2, 7, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = (a * 4).requires_grad_()
    lrn = LocalResponseNorm(size, alpha=0.3, beta=beta, k=2.0)
    assert torch.autograd.gradcheck(lrn, (a,))
    reference = nn.LocalResponseNorm(size, alpha=0.3 * size, beta=beta, k=2.0)
    assert torch.allclose(lrn(a), reference(a), rtol=1e-12)
    g = torch.randn_like(a)
    (ours,) = torch.autograd.grad(lrn(a), a, g)
    (theirs,) = torch.autograd.grad(reference(a), a, g)
    assert torch.allclose(ours, theirs, rtol=1e-10)


def test_lrn_keeps_dtype_and_memory_format() -> None:
    lrn = LocalResponseNorm()
    x = torch.randn(2, 16, 5, 5).contiguous(memory_format=torch.channels_last) * 30
    out = lrn(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, lrn(x.contiguous()), rtol=1e-6)
    half = lrn(x.bfloat16().requires_grad_())
    assert half.dtype == torch.bfloat16
    half.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [True, False])
def test_lrn_inference_in_slices_is_the_whole_batch_forward(
    dtype: torch.dtype, channels_last: bool
) -> None:
    # 16 x 64 x 64 float32 activations per image: slices of 4 images, the last one of 2
    x = torch.randn(10, 16, 64, 64, generator=torch.Generator().manual_seed(2)).mul_(30)
    x = x.to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    lrn = LocalResponseNorm()
    whole = _LRNFunction.apply(x, lrn.size, lrn.alpha, lrn.beta, lrn.k)
    with torch.inference_mode():
        sliced = lrn(x)
    assert sliced.dtype == dtype
    assert sliced.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(sliced, whole)
    with torch.no_grad():
        assert torch.equal(lrn(x), whole)
        assert lrn(x[:0]).shape == (0, 16, 64, 64)  # an empty batch, as torch's own LRN allows


def test_compiled_lrn_does_not_recompile_for_every_batch_size() -> None:
    # Under torch.compile LRN takes the whole-batch path: the slices' loop would be unrolled
    # for each batch size, a recompile per size (and eager fallback past the limit).
    lrn = LocalResponseNorm()
    compiled = torch.compile(lrn, backend="eager")
    torch._dynamo.reset()
    with torch.no_grad():
        for b in (3, 5):  # the second size makes the batch dimension dynamic
            x = torch.randn(b, 16, 64, 64)
            assert torch.equal(compiled(x), lrn(x))
        with torch._dynamo.config.patch(error_on_recompile=True):
            for b in (7, 9, 12):
                x = torch.randn(b, 16, 64, 64)
                assert torch.equal(compiled(x), lrn(x))


def test_overlapping_pooling_and_dropout() -> None:
    model = AlexNet(PRESETS["alexnet-small"])
    pools = [m for m in model.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools] == [(3, 2)] * 3, "overlapping: 3 > 2"
    # dropout 0.5 right before fc6 and fc7, none before fc8
    layers = list(model.classifier.named_children())
    drops = [
        (layers[i + 1][0], m.p) for i, (_, m) in enumerate(layers) if isinstance(m, nn.Dropout)
    ]
    assert drops == [("fc6", 0.5), ("fc7", 0.5)]
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 7, "after each of five convs and two hidden FC layers"
    x = torch.randn(2, 3, 28, 28)
    model.train()
    assert not torch.equal(model(x), model(x)), "dropout active in training"
    model.eval()
    assert torch.equal(model(x), model(x)), "and off in evaluation"


def test_init_schemes() -> None:
    """'paper' sets the paper's biases; 'kaiming' keeps the output input-dependent at init."""
    torch.manual_seed(0)
    x = torch.randn(64, 3, 28, 28)
    paper = AlexNet(dataclasses.replace(PRESETS["alexnet-small"], init="paper")).eval()
    for name in ("conv2", "conv4", "conv5"):
        assert torch.all(getattr(paper.features, name).bias == 1)
    assert torch.all(paper.features.conv1.bias == 0) and torch.all(paper.classifier.fc8.bias == 0)
    assert abs(paper.classifier.fc6.weight.std().item() - 0.01) < 1e-3
    kaiming = AlexNet(PRESETS["alexnet-small"]).eval()
    assert kaiming.config.init == "kaiming"
    with torch.no_grad():
        spread_paper = paper(x).std(0).mean().item()
        spread_kaiming = kaiming(x).std(0).mean().item()
    # the paper's 0.01 weights make the logits (nearly) the same for every input
    assert spread_kaiming > 100 * spread_paper
    with pytest.raises(ValueError, match="init"):
        dataclasses.replace(PRESETS["alexnet-small"], init="xavier")
