"""What is specific to training the AEVB VAE: data (MNIST, Frey Face), loss, evaluation, card."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.checkpoint import DatasetInfo, InputSpec, ModelCard, load_checkpoint
from models.vae import VAE, VAEConfig
from training.data import TensorBatches, load_frey, load_mnist, split_indices
from training.devices import select_device
from training.loop import Task, update_card

TEST_BINARIZE_SEED = 0  # the MNIST test set is binarised once, with this seed
EVAL_SEED = 1  # fixed sample for the per-epoch test ELBO, so epochs compare like with like
DEFAULT_HIDDEN = {"mnist": 500, "frey": 200}


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """The `eval-vae` subcommand's options beyond the common ones (cli.py)."""
    p.add_argument(
        "--k",
        type=int,
        default=5000,
        help="importance samples per image (default: %(default)s, as reported)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="evaluate only the first N images; metrics are then stored as <key>_first<N> (default: all)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=20,
        help="images per importance-sampling batch (default: %(default)s)",
    )
    p.add_argument(
        "--chunk",
        type=int,
        default=500,
        help="samples per decoder pass; memory ~ chunk x batch x pixels (default: %(default)s)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the importance samples (default: %(default)s)"
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `vae` subcommand's model-specific options."""
    p.add_argument(
        "--dataset",
        choices=["mnist", "frey"],
        default="mnist",
        help="mnist: Bernoulli decoder, dynamic binarisation; frey: Frey Face, Gaussian decoder (default: mnist)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="the model's name in its card and the API (default: vae-<dataset>)",
    )
    p.add_argument(
        "--latent",
        type=int,
        default=20,
        help="latent size Nz (paper: 3, 5, 10, 20, 200; default: 20)",
    )
    p.add_argument(
        "--hidden",
        type=int,
        default=None,
        help="hidden units per layer (default: 500 for MNIST, 200 for Frey Face, as in the paper)",
    )
    p.add_argument(
        "--depth",
        type=int,
        default=1,
        help="hidden layers in encoder and decoder (1 = the paper; default: 1)",
    )
    p.add_argument(
        "--init",
        choices=["default", "paper"],
        default="default",
        help="default: PyTorch's Linear init; paper: every weight and bias from N(0, 0.01^2), "
        "as in the paper (default: default)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="Frey Face only: fraction held out for validation, seeded by --seed (default: 0.1)",
    )
    p.set_defaults(
        optimizer="adam", lr=1e-3, batch_size=100, epochs=100, schedule="constant", weight_decay=0.0
    )


def evaluate_elbo(model: VAE, x: Tensor, batch_size: int = 1000, seed: int = EVAL_SEED) -> float:
    """Mean one-sample ELBO (nats per image) of `x` (N, H, W) in [0, 1], with a fixed sample."""
    p = next(model.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(p.device, torch.float32)
        total += model.elbo_terms(xb, generator=g).elbo.double().sum().item()
    return total / len(x)


def binarize_fixed(x_uint8: Tensor, seed: int = TEST_BINARIZE_SEED) -> Tensor:
    """Binarise grey levels once: each pixel ~ Bernoulli(grey / 255), seeded; (N, H, W) float."""
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(x_uint8.float() / 255, generator=g)


def eval_split(card: ModelCard, data_dir: Path, download: bool = False) -> tuple[str, Tensor]:
    """The split a VAE card was evaluated on, rebuilt: (name, images (N, H, W) in [0, 1])."""
    if card.dataset.name == "mnist":
        test_u8, _ = load_mnist(data_dir, train=False, download=download)
        return "test", binarize_fixed(test_u8)
    if card.dataset.name == "frey-face":
        faces = load_frey(data_dir).float().div_(255)
        seed = card.dataset.seed if card.dataset.seed is not None else 0
        _, va = split_indices(len(faces), int(card.training["val_size"]), seed)
        return "val", faces[va]
    raise ValueError(f"unknown VAE dataset {card.dataset.name!r} in the card")


def importance_log_px(
    model: VAE,
    x: Tensor,
    k: int,
    batch_size: int = 20,
    chunk: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> Tensor:
    """log p(x) estimated with k importance samples per image, (N, H, W) -> (N,), batched."""
    from tqdm import tqdm

    p = next(model.parameters())
    g = torch.Generator(device=p.device).manual_seed(seed)
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc=f"log p(x), k={k}", disable=not progress):
        xb = x[i : i + batch_size].to(p.device, torch.float32)
        out.append(
            model.importance_log_likelihood(xb, k=k, chunk=chunk, generator=g).double().cpu()
        )
    return torch.cat(out)


def evaluate_checkpoint(args: argparse.Namespace) -> ModelCard:
    """`eval-vae`: lower bound and importance-sampled log p(x) on the card's split, into the card."""
    device = select_device(args.device)
    model, card = load_checkpoint(args.checkpoint, device)
    assert isinstance(model, VAE)
    split, x = eval_split(card, Path(args.data_dir), args.download)
    suffix = ""
    if args.limit is not None and args.limit < len(x):
        x, suffix = x[: args.limit], f"_first{args.limit}"
    progress = args.progress and sys.stderr.isatty()
    elbo = evaluate_elbo(model, x)
    log_px = importance_log_px(model, x, args.k, args.batch_size, args.chunk, args.seed, progress)
    metrics = {f"{split}_elbo{suffix}": elbo, f"{split}_log_px{suffix}": log_px.mean().item()}
    note = {
        "k": args.k,
        "images": len(x),
        "seed": args.seed,
        "estimator": "importance sampling, q(z|x) proposal",
    }
    # Beside its metrics: a --limit run must not overwrite the full evaluation's description.
    return update_card(args.checkpoint, card, metrics, **{f"log_px_evaluation{suffix}": note})


@torch.no_grad()
def vae_figures(model: VAE, x: Tensor, split: str, run_dir: Path, seed: int = 0) -> None:
    """Training curves, 100 samples, reconstructions of 20 held-out images, 2-D manifold."""
    from training import plots

    keys = ["train_elbo", f"{split}_elbo", "lr"]
    plots.plot_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", keys)
    p = next(model.parameters())
    _, samples = model.sample(100, generator=torch.Generator(device=p.device).manual_seed(seed))
    plots.save_image_grid(samples.float().cpu(), run_dir / "samples.png", nrow=10)
    inputs = x[:20, None].to(p.device, torch.float32)  # (20, 1, H, W)
    mean, _ = model.encode(inputs)
    plots.plot_reconstructions(
        inputs.cpu(), model.decode(mean).float().cpu(), run_dir / "reconstructions.png"
    )
    if model.config.latent == 2:
        plots.plot_manifold(model, run_dir / "manifold.png")


def build_task(args: argparse.Namespace, device: torch.device, world_size: int, rank: int) -> Task:
    """The VAE training task for `args` (see `add_arguments`)."""
    data_dir = Path(args.data_dir)
    hidden = args.hidden or DEFAULT_HIDDEN[args.dataset]
    extra: dict[str, Any] = {"samples_per_datapoint": 1}
    if args.dataset == "mnist":
        train_u8, _ = load_mnist(data_dir, train=True, download=args.download)
        test_u8, _ = load_mnist(data_dir, train=False, download=args.download)
        train_x = train_u8.float().div_(255).to(device)  # (60000, 28, 28) grey levels
        eval_x = binarize_fixed(test_u8)  # (10000, 28, 28) in {0, 1}
        likelihood: Literal["bernoulli", "gaussian"] = "bernoulli"
        eval_name = "test"
        dataset = DatasetInfo(
            name="mnist",
            train_split="train (60,000), dynamically binarised: pixel ~ Bernoulli(grey level), redrawn each epoch",
            eval_split=f"test (10,000), binarised once with seed {TEST_BINARIZE_SEED}",
            seed=TEST_BINARIZE_SEED,
        )
    else:
        faces = load_frey(data_dir).float().div_(255)  # (1965, 28, 20) in [0, 1]
        n_val = round(len(faces) * args.val_fraction)
        tr, va = split_indices(len(faces), n_val, args.seed)
        train_x, eval_x = faces[tr].to(device), faces[va]
        likelihood, eval_name = "gaussian", "val"
        dataset = DatasetInfo(
            name="frey-face",
            train_split=f"{len(tr)} of {len(faces)} images (seeded random split, seed {args.seed})",
            eval_split=f"val: the other {len(va)} images",
            seed=args.seed,
        )
        extra["val_size"] = len(va)
    config = VAEConfig(
        image_shape=tuple(train_x.shape[1:]),  # type: ignore[arg-type]
        hidden=hidden,
        latent=args.latent,
        likelihood=likelihood,
        depth=args.depth,
        init=args.init,
    )
    torch.manual_seed(args.seed)
    model = VAE(config)
    batches = TensorBatches(
        [train_x], args.batch_size, seed=args.seed, world_size=world_size, rank=rank
    )
    binary = likelihood == "bernoulli"

    def step(m: nn.Module, batch: tuple[Tensor, ...]) -> tuple[Tensor, int]:
        x = batch[0]
        if binary:  # dynamic binarisation: a fresh Bernoulli draw every time x is seen
            x = torch.bernoulli(x)
        return m(x), len(x)  # VAE.forward = -ELBO, mean over the batch

    def evaluate(m: nn.Module, epoch: int) -> dict[str, float]:
        return {f"{eval_name}_elbo": evaluate_elbo(m, eval_x)}  # type: ignore[arg-type]

    def make_card(metrics: dict[str, float], training: dict[str, Any]) -> ModelCard:
        return ModelCard(
            name=getattr(args, "name", None) or f"vae-{args.dataset}",
            architecture="vae",
            config=config.to_dict(),
            task="generation",
            input=InputSpec(
                channels=1,
                size=config.image_shape,
                resize=None,
                mean=[0.0],
                std=[1.0],
                # MNIST digits are white ink on black: a transparent canvas is black there.
                background=0 if args.dataset == "mnist" else 255,
            ),
            dataset=dataset,
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            training={**training, **extra},
        )

    return Task(
        model=model,
        train_batches=batches,
        step_fn=step,
        evaluate=evaluate,
        make_card=make_card,
        make_figures=lambda m, run_dir: vae_figures(m, eval_x, eval_name, run_dir),  # type: ignore[arg-type]
        loss_metric=("train_elbo", -1.0),
        best_metric=(f"{eval_name}_elbo", True),
        extra_training={"objective": "SGVB lower bound (paper eq. 10), KL in closed form"},
    )
