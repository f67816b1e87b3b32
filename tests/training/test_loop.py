"""The shared loop: one step lowers the loss (in fp32 and under bf16 autocast), --amp auto picks
bf16 only where the device has it, batching shards and reshuffles reproducibly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.alexnet import PRESETS, AlexNet
from models.vae import VAE, VAEConfig
from training.data import TensorBatches, split_indices
from training.devices import select_device, use_amp
from training.loop import LoopOptions, build_optimizer, build_scheduler, train


def _one_step(model: nn.Module, batches: TensorBatches, step_fn, opts: LoopOptions) -> None:
    opt = build_optimizer(model.parameters(), opts)
    sched = build_scheduler(opt, opts, len(batches))
    train(batches, model, step_fn, opt, sched, 0, torch.device("cpu"), opts, show_progress=False)


def test_vae_step_lowers_negative_elbo(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAE(VAEConfig(image_shape=(8, 8), hidden=32, latent=4))
    x = torch.bernoulli(torch.full((64, 8, 8), 0.3))
    batches = TensorBatches([x], batch_size=64)

    def loss_at_fixed_noise() -> float:
        torch.manual_seed(123)  # same reparameterisation noise before and after the step
        with torch.no_grad():
            return model(x).item()

    before = loss_at_fixed_noise()
    opts = LoopOptions(run_dir=tmp_path, epochs=1, optimizer="adam", lr=1e-2)
    _one_step(model, batches, lambda m, b: (m(b[0]), len(b[0])), opts)
    assert loss_at_fixed_noise() < before


def test_alexnet_small_step_lowers_cross_entropy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AlexNet(PRESETS["alexnet-small"])
    x, y = torch.randn(16, 3, 28, 28), torch.randint(0, 10, (16,))
    batches = TensorBatches([x, y], batch_size=16)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    def step(m: nn.Module, b: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        return F.cross_entropy(m(b[0]), b[1]), len(b[1])

    before = eval_loss()
    # He-normal init on N(0, 1) noise gives a gradient norm near 30: lr 1e-3 is a small step
    opts = LoopOptions(run_dir=tmp_path, epochs=1, optimizer="sgd", lr=1e-3, schedule="constant")
    _one_step(model, batches, step, opts)
    assert eval_loss() < before


def _alexnet_step_under(amp: str, tmp_path: Path) -> tuple[float, float, list[torch.dtype]]:
    """One SGD step of alexnet-small on the CPU with `--amp amp`: (loss before, loss after, the
    dtypes of the logits the step saw)."""
    torch.manual_seed(0)
    model = AlexNet(PRESETS["alexnet-small"])
    x, y = torch.randn(16, 3, 28, 28), torch.randint(0, 10, (16,))
    seen: list[torch.dtype] = []

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.cross_entropy(model(x), y).item()

    def step(m: nn.Module, b: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        logits = m(b[0])
        seen.append(logits.dtype)
        return F.cross_entropy(logits, b[1]), len(b[1])

    before = eval_loss()
    opts = LoopOptions(
        run_dir=tmp_path, epochs=1, optimizer="sgd", lr=1e-3, schedule="constant", amp=amp
    )
    _one_step(model, TensorBatches([x, y], batch_size=16), step, opts)
    return before, eval_loss(), seen


def test_a_bf16_autocast_step_on_the_cpu_lowers_cross_entropy(tmp_path: Path) -> None:
    before, after, seen = _alexnet_step_under("bf16", tmp_path)
    assert seen == [torch.bfloat16]  # the network ran in bf16 ...
    assert after < before  # ... and the fp32 weights it updated fit the batch better


def test_amp_auto_trains_in_bf16_only_on_a_cpu_with_native_bf16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The capability check is faked: this CPU's flags say nothing about another's."""
    cpu = torch.device("cpu")
    monkeypatch.setattr("models.hardware.cpu_bf16_flags", lambda *a: [])
    assert not use_amp("auto", cpu) and use_amp("bf16", cpu) and not use_amp("off", cpu)
    before, after, seen = _alexnet_step_under("auto", tmp_path)
    assert seen == [torch.float32] and after < before
    monkeypatch.setattr("models.hardware.cpu_bf16_flags", lambda *a: ["avx512_bf16"])
    assert use_amp("auto", cpu) and not use_amp("off", cpu)
    assert _alexnet_step_under("auto", tmp_path)[2] == [torch.bfloat16]
    with pytest.raises(ValueError, match="amp must be one of"):
        use_amp("fp16", cpu)


def test_tensor_batches_shard_disjointly_and_reshuffle_reproducibly() -> None:
    rows = torch.arange(40)
    ranks = [TensorBatches([rows], 5, seed=3, world_size=2, rank=r) for r in (0, 1)]
    seen = [torch.cat([b[0] for b in tb]) for tb in ranks]
    assert len(ranks[0]) == 4
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert sorted(seen[0].tolist() + seen[1].tolist()) == list(range(40))
    ranks[0].set_epoch(1)
    epoch1 = torch.cat([b[0] for b in ranks[0]])
    assert not torch.equal(epoch1, seen[0])  # a new order each epoch ...
    again = TensorBatches([rows], 5, seed=3, world_size=2, rank=0)
    again.set_epoch(1)
    assert torch.equal(torch.cat([b[0] for b in again]), epoch1)  # ... the same one on resume


def test_split_indices_is_seeded_and_disjoint() -> None:
    tr, va = split_indices(100, 10, seed=7)
    assert len(tr) == 90 and len(va) == 10
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert torch.equal(split_indices(100, 10, seed=7)[1], va)
    assert not torch.equal(split_indices(100, 10, seed=8)[1], va)


def test_device_auto_is_cpu_without_cuda() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_onecycle_schedules_the_learning_rate_and_leaves_momentum_alone(
    tmp_path: Path, optimizer: str
) -> None:
    opts = LoopOptions(
        run_dir=tmp_path, epochs=2, optimizer=optimizer, lr=0.02, momentum=0.9, schedule="onecycle"
    )
    param = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([param], opts)
    sched = build_scheduler(opt, opts, steps_per_epoch=10)
    lrs, momenta = [], []
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        momenta.append(opt.param_groups[0].get("momentum"))
    assert max(lrs) > 10 * min(lrs)  # the one cycle of the learning rate
    if optimizer == "sgd":
        assert set(momenta) == {0.9}  # --momentum as given, as in the paper


def test_no_amp_trains_in_fp32_on_cuda_too() -> None:
    import contextlib

    from training.devices import autocast

    cuda = torch.device("cuda")
    assert not use_amp("off", cuda)
    assert isinstance(autocast(cuda, enabled=False), contextlib.nullcontext)
    assert isinstance(autocast(torch.device("cpu"), enabled=False), contextlib.nullcontext)
    with pytest.warns(UserWarning) if not torch.cuda.is_available() else contextlib.nullcontext():
        assert isinstance(autocast(cuda), torch.autocast)  # the default on a GPU: bf16
