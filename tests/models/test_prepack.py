"""Packed fully connected layers: the same outputs as nn.Linear, inference only, CPU float32 (and
bfloat16 where the CPU has native bf16)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import threading
import weakref

import pytest
import torch
from torch import nn

from models import prepack
from models.alexnet import PRESETS, AlexNet
from models.prepack import (
    PackedLinear,
    can_prepack,
    packing_summary,
    packing_threshold,
    prepack_linear,
    serving_rows,
    threshold_from_timings,
)
from models.vae import VAE, VAEConfig

pytestmark = pytest.mark.skipif(not can_prepack("cpu"), reason="torch built without oneDNN")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 37), (8, 37), (33, 37), (2, 5, 37), (0, 37), (37,)])
def test_packed_linear_is_nn_linear(shape: tuple[int, ...], bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(37, 19, bias=bias)
    x = torch.randn(shape)
    packed = PackedLinear(linear)
    with torch.inference_mode():
        got, ref = packed(x), linear(x)
    assert got.shape == ref.shape == (*shape[:-1], 19)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert (packed.bias is None) == (not bias)


@pytest.mark.skipif(not can_prepack("cpu", torch.bfloat16), reason="CPU without native bf16")
def test_packed_bf16_linear_is_bf16_nn_linear() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 19).to(torch.bfloat16)
    packed = PackedLinear(linear)
    x = torch.randn(8, 64).to(torch.bfloat16)
    with torch.inference_mode():
        got, ref = packed(x), linear(x)
        # timed as it runs: bf16 input for a bf16 weight
        assert packing_threshold(linear, [1, 8], packed, repeat=1) in (None, 1, 8)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2, atol=2e-2)


def test_packed_linear_takes_strided_input() -> None:
    linear = nn.Linear(37, 19)
    x = torch.randn(37, 6).t()  # (6, 37), not contiguous
    with torch.inference_mode():
        torch.testing.assert_close(PackedLinear(linear)(x), linear(x), rtol=1e-5, atol=1e-5)


def _alexnet() -> AlexNet:
    torch.manual_seed(0)
    return (
        AlexNet(dataclasses.replace(PRESETS["alexnet-small"], hidden=64))
        .eval()
        .to(memory_format=torch.channels_last)
    )


def test_prepacked_alexnet_classifies_as_before() -> None:
    dense = _alexnet()
    packed = copy.deepcopy(dense)
    assert prepack_linear(packed) == 3  # fc6, fc7, fc8
    assert not any(type(m) is nn.Linear for m in packed.modules())
    x = torch.randn(5, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), dense(x), rtol=1e-4, atol=1e-5)
    assert prepack_linear(packed) == 0, "already packed: nothing left to do"


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_prepacked_vae_encodes_decodes_and_samples_as_before(likelihood: str) -> None:
    torch.manual_seed(0)
    cfg = VAEConfig(image_shape=(28, 20), hidden=16, latent=5, likelihood=likelihood)  # type: ignore[arg-type]
    dense = VAE(cfg).eval()
    packed = copy.deepcopy(dense)
    n_linear = sum(type(m) is nn.Linear for m in dense.modules())
    assert prepack_linear(packed) == n_linear
    x = torch.rand(4, 1, 28, 20)
    with torch.inference_mode():
        for got, ref in zip(packed.encode(x), dense.encode(x), strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        z = torch.randn(4, 5)
        torch.testing.assert_close(packed.decode(z), dense.decode(z), rtol=1e-5, atol=1e-5)
        # sample() finds the device and dtype from the parameters: the biases still say them
        z, images = packed.sample(3, generator=torch.Generator().manual_seed(1))
        z_ref, images_ref = dense.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, z_ref) and images.shape == (3, 1, 28, 20)
    torch.testing.assert_close(images, images_ref, rtol=1e-5, atol=1e-5)


def test_packed_model_keeps_no_dense_fc_weights() -> None:
    packed = _alexnet()
    before = sum(p.numel() for p in packed.parameters())
    dense_weights = [weakref.ref(m.weight) for m in packed.modules() if type(m) is nn.Linear]
    prepack_linear(packed)
    fc_weights = sum(m.weight.numel() for m in _alexnet().modules() if isinstance(m, nn.Linear))
    assert sum(p.numel() for p in packed.parameters()) == before - fc_weights
    gc.collect()
    assert all(w() is None for w in dense_weights), "the dense fc weights were freed"


def test_a_layer_under_two_names_becomes_one_packed_layer() -> None:
    shared = nn.Linear(6, 6)
    model = nn.Sequential(shared, nn.ReLU(), shared).eval()
    model.extra = nn.Sequential(shared)
    x = torch.randn(3, 6)
    with torch.inference_mode():
        ref = model(x)
        assert prepack_linear(model) == 1
        assert model[0] is model[2] is model.extra[0] and isinstance(model[0], PackedLinear)
        torch.testing.assert_close(model(x), ref, rtol=1e-5, atol=1e-5)


def test_packed_layer_cannot_be_saved_copied_or_moved() -> None:
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    prepack_linear(model)
    for action in (model.state_dict, lambda: copy.deepcopy(model), model.double,
                   lambda: model.to("cpu")):  # fmt: skip
        with pytest.raises(RuntimeError, match="before prepack_linear"):
            action()


def test_only_eval_mode_float32_or_native_bf16_cpu_models_are_packed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="eval"):
        prepack_linear(_alexnet().train())
    double = _alexnet().double()
    assert prepack_linear(double) == 0
    assert sum(type(m) is nn.Linear for m in double.modules()) == 3
    assert not can_prepack("cuda") and not can_prepack("cpu", torch.float16)
    monkeypatch.setattr(prepack, "bf16_native", lambda device: False)  # bf16 emulated: slow
    assert not can_prepack("cpu", torch.bfloat16)
    with pytest.raises(ValueError, match="cannot pack"):
        PackedLinear(nn.Linear(3, 2).double())


def test_packed_linear_refuses_training() -> None:
    packed = PackedLinear(nn.Linear(4, 3))
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="inference"):
        packed(x)
    with torch.no_grad():  # as nn.Linear: no graph recorded, so no gradient needed
        assert packed(x).shape == (2, 3)
    small = _alexnet()
    assert prepack_linear(small, min_weights=10**9) == 0, "no layer that large"


def test_threads_share_one_packed_model() -> None:
    """Inference lanes run one model from several threads at once."""
    packed = _alexnet()
    prepack_linear(packed)
    xs = [torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    with torch.inference_mode():
        expected = [packed(x) for x in xs]
    got: dict[int, list[torch.Tensor]] = {}

    def run(i: int) -> None:
        with torch.inference_mode():
            got[i] = [packed(xs[i]) for _ in range(20)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [0, 1, 2, 3], "every thread finished"
    for i, outs in got.items():
        for out in outs:
            assert torch.equal(out, expected[i])


@pytest.mark.parametrize(
    ("dense_ms", "packed_ms", "threshold"),
    [
        ([1.0, 2.0, 4.0, 8.0], [2.0, 1.0, 2.0, 4.0], 2),  # MKL wins at 1 row only
        ([1.0, 2.0, 4.0, 8.0], [0.5, 1.0, 2.0, 4.0], 1),  # oneDNN wins everywhere
        ([1.0, 2.0, 4.0, 8.0], [2.0, 3.0, 5.0, 9.0], None),  # never
        ([1.0, 2.0, 4.0, 8.0], [0.5, 2.0, 2.0, 4.0], 4),  # a tie at 2 rows: from 4 on
        ([1.0, 2.0, 4.0, 8.0], [0.5, 1.0, 2.0, 7.8], None),  # within the margin at the top
    ],
)
def test_packing_pays_from_the_fewest_rows_where_it_wins_from_there_up(
    dense_ms: list[float], packed_ms: list[float], threshold: int | None
) -> None:
    assert threshold_from_timings([1, 2, 4, 8], dense_ms, packed_ms, margin=0.05) == threshold
    # the order the timings come in does not matter
    rev = threshold_from_timings([8, 4, 2, 1], dense_ms[::-1], packed_ms[::-1], margin=0.05)
    assert rev == threshold


def test_serving_rows_are_one_the_powers_of_two_and_the_largest_batch() -> None:
    assert serving_rows(1) == [1]
    assert serving_rows(32) == [1, 2, 4, 8, 16, 32]
    assert serving_rows(24) == [1, 2, 4, 8, 16, 24]


def test_a_layer_packed_from_some_rows_on_runs_dense_below() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(37, 19)
    layer = PackedLinear(linear, dense_below=4)
    assert "dense below 4 rows" in repr(layer)
    with torch.inference_mode():
        for shape in [(1, 37), (3, 37), (37,), (1, 3, 37)]:  # under 4 rows: the dense weight
            x = torch.randn(shape)
            assert torch.equal(layer(x), linear(x)), shape
        for shape in [(4, 37), (33, 37), (2, 2, 37)]:
            x = torch.randn(shape)
            torch.testing.assert_close(layer(x), linear(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="before prepack_linear"):
        copy.deepcopy(layer)


@pytest.mark.parametrize(
    ("threshold", "kind"),
    [(None, nn.Linear), (1, "packed"), (4, "packed from 4 rows")],
)
def test_timed_packing_keeps_what_each_layer_needs(
    monkeypatch: pytest.MonkeyPatch, threshold: int | None, kind: object
) -> None:
    """With `rows`, a layer that never wins stays nn.Linear, one that wins at every batch size
    drops its dense weight, one that wins from some size on keeps it for smaller batches."""
    asked: list[list[int]] = []

    def fake_threshold(linear: nn.Linear, rows: list[int], packed: PackedLinear) -> int | None:
        asked.append(list(rows))
        assert packed.in_features == linear.in_features, "the layer's own packing is timed"
        return threshold

    monkeypatch.setattr(prepack, "packing_threshold", fake_threshold)
    dense = _alexnet()
    model = copy.deepcopy(dense)
    n = prepack_linear(model, rows=[1, 2, 4, 8])
    assert asked == [[1, 2, 4, 8]] * 3  # fc6, fc7, fc8, each timed once
    summary = packing_summary(model)
    assert list(summary) == ["classifier.fc6", "classifier.fc7", "classifier.fc8"]
    if kind is nn.Linear:
        assert n == 0 and set(summary.values()) == {"dense"}
    elif kind == "packed":
        assert n == 3 and set(summary.values()) == {"oneDNN"}
        assert all(m.dense is None for m in model.modules() if isinstance(m, PackedLinear))
    else:
        assert n == 3 and set(summary.values()) == {"oneDNN from 4 rows"}
    x = torch.randn(6, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for b in (1, 6):
            torch.testing.assert_close(model(x[:b]), dense(x[:b]), rtol=1e-4, atol=1e-5)


def test_timed_packing_measures_both_kernels() -> None:
    """The real timer on a layer: a threshold among the rows asked, or None."""
    linear = nn.Linear(64, 32)
    assert packing_threshold(linear, [1, 8], repeat=2) in (None, 1, 8)
