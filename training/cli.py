"""Command line: `python -m training {vae,alexnet} ...` trains and exports a checkpoint.

Examples:
    python -m training vae --dataset mnist --data-dir ../shared/datasets --epochs 100
    python -m training alexnet --data-dir ../shared/datasets --epochs 30
    torchrun --nproc-per-node 4 -m training alexnet --data-dir ... (same command, 4 GPUs)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from models.checkpoint import CheckpointError
from training import alexnet, alexnet_eval, figure2, marginal, vae
from training.data import DataError
from training.devices import AMP_MODES, setup_distributed
from training.loop import LoopOptions, fit
from training.pack import PackError, write_pack


def _add_training_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the shared loop, common to every model (defaults set per model)."""
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="dataset root: holds MNIST/raw, frey_rawface.mat, cifar10/train (ImageFolder) or "
        "is a .pack file (default: %(default)s)",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download MNIST / CIFAR-10 into --data-dir",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="metrics.jsonl, state.pt (resume only, never shipped), figures and export go here (default: runs/<model>-<dataset>)",
    )
    g.add_argument(
        "--export",
        type=Path,
        default=None,
        help="directory of the exported checkpoint, model.safetensors + config.json (default: <run-dir>/export)",
    )
    g.add_argument(
        "--export-best",
        action="store_true",
        help="export after every epoch that improves the validation metric, and keep that one at the end",
    )
    g.add_argument(
        "--resume", action="store_true", help="continue from <run-dir>/state.pt if it exists"
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the init, the shuffles and the validation split (default: %(default)s)",
    )
    g.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars on a terminal, and no progress line every minute when stderr is "
        "not one (a log file, docker compose logs)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--epochs", type=int, help="passes over the training split (default: %(default)s)"
    )
    g.add_argument("--batch-size", type=int, help="minibatch per process (default: %(default)s)")
    g.add_argument("--optimizer", choices=["adam", "adagrad", "sgd"], help="default: %(default)s")
    g.add_argument(
        "--lr", type=float, help="learning rate; the peak rate for onecycle (default: %(default)s)"
    )
    g.add_argument(
        "--momentum", type=float, default=0.9, help="SGD momentum (default: %(default)s)"
    )
    g.add_argument("--weight-decay", type=float, help="L2 weight decay (default: %(default)s)")
    g.add_argument(
        "--schedule",
        choices=["constant", "onecycle", "cosine", "step"],
        help="learning-rate schedule, stepped per batch; step: x0.1 at 50%% and 75%% of the run (default: %(default)s)",
    )
    g.add_argument(
        "--clip-grad",
        type=float,
        default=None,
        help="clip the gradient norm to this value; None: off (default: %(default)s)",
    )
    g = p.add_argument_group("hardware")
    g.add_argument(
        "--device",
        default="auto",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N; channels-last on CUDA only (default: %(default)s)",
    )
    g.add_argument(
        "--compile", action="store_true", help="torch.compile the model (slow start, faster steps)"
    )
    g.add_argument(
        "--amp",
        choices=AMP_MODES,
        default="auto",
        help="bf16 autocast: auto (on CUDA and on CPUs with AMX-BF16 or AVX512-BF16, where bf16 "
        "is native; fp32 elsewhere), bf16 (always; emulated, so slow, on other CPUs), off (fp32); "
        "the card records the precision used (default: %(default)s)",
    )
    g.add_argument("--no-amp", dest="amp", action="store_const", const="off", help="--amp off")


def _add_eval_arguments(p: argparse.ArgumentParser, data: str) -> None:
    """Options common to the evaluation commands."""
    p.add_argument(
        "checkpoint",
        type=Path,
        help="checkpoint directory (model.safetensors + config.json); its card is updated in place",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("data"),
        help="the data the checkpoint was trained on, as for training (default: %(default)s)",
    )
    p.add_argument(
        "--download", action="store_true", help=f"let torchvision download {data} into --data-dir"
    )
    p.add_argument(
        "--device", default="auto", help="auto, cpu, cuda, cuda:N (default: %(default)s)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI."""
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train, evaluate and pack data for the AEVB VAE and AlexNet. "
        "Multi-GPU / multi-node: run the same command under torchrun.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "vae",
        help="train the AEVB variational autoencoder (MNIST or Frey Face)",
        description="Train the VAE of Kingma & Welling (2013) and export a checkpoint.",
    )
    _add_training_arguments(p)
    vae.add_arguments(p)
    p = sub.add_parser(
        "alexnet",
        help="train AlexNet (CIFAR-10 or an ImageFolder tree)",
        description="Train AlexNet (Krizhevsky et al. 2012) and export a checkpoint.",
    )
    _add_training_arguments(p)
    alexnet.add_arguments(p)
    p = sub.add_parser(
        "eval-vae",
        help="lower bound and importance-sampled log p(x) of a VAE checkpoint",
        description="Evaluate a VAE checkpoint on the split its card names (MNIST test set, "
        "binarised with the recorded seed; Frey Face validation split) and write the lower bound "
        "and the importance-sampled log-likelihood into its card.",
    )
    _add_eval_arguments(p, "MNIST")
    vae.add_eval_arguments(p)
    p = sub.add_parser(
        "eval-alexnet",
        help="top-1/top-5 error of an AlexNet checkpoint on its validation split",
        description="Evaluate an AlexNet checkpoint on the seeded validation split its card "
        "records and write top-1/top-5 error into its card.",
    )
    _add_eval_arguments(p, "CIFAR-10")
    alexnet_eval.add_eval_arguments(p)
    p = sub.add_parser(
        "pack-imagefolder",
        help="pack an ImageFolder tree into one file (for transfer)",
        description="Pack the image files of an ImageFolder tree (raw bytes, no re-encoding) into "
        "one file with a JSON index; train from it with `alexnet --packed FILE`.",
    )
    p.add_argument("src", type=Path, help="ImageFolder root: one folder of images per class")
    p.add_argument("out", type=Path, help="the pack file to write; *.xz: xz-compressed")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p = sub.add_parser(
        "figure2",
        help="reproduce the AEVB paper's Figure 2 (MNIST lower bound per latent size) as a table",
        description="Train the paper's MNIST VAE for each latent size and write "
        "<out>/vae-figure2.md and .json: our test lower bound beside the paper's.",
    )
    figure2.add_arguments(p)
    marginal.add_parsers(sub)
    return parser


def loop_options(args: argparse.Namespace) -> LoopOptions:
    return LoopOptions(
        run_dir=args.run_dir,
        epochs=args.epochs,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        batch_size=args.batch_size,
        clip_grad=args.clip_grad,
        device=args.device,
        compile=args.compile,
        amp=args.amp,
        progress=args.progress,
        resume=args.resume,
        export=args.export,
        export_best=args.export_best,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for unusable data or checkpoints)."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (DataError, PackError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "pack-imagefolder":
        n = write_pack(args.src, args.out, progress=args.progress and sys.stderr.isatty())
        print(f"packed {n} images into {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if args.command == "figure2":
        figure2.run(args, train=main)  # each latent size trains through the `vae` command
        print(f"wrote {args.out / 'vae-figure2.md'}")
        return 0
    if args.command in marginal.COMMANDS:
        marginal.run(args)
        return 0
    if args.command in ("eval-vae", "eval-alexnet"):
        evaluator = vae if args.command == "eval-vae" else alexnet_eval
        card = evaluator.evaluate_checkpoint(args)
        print(json.dumps(card.metrics, indent=2))
        return 0
    if args.command in ("vae", "alexnet"):
        if args.run_dir is None:
            args.run_dir = Path("runs") / f"{args.command}-{args.dataset}"
        device, info = setup_distributed(args.device)
        module = vae if args.command == "vae" else alexnet
        task = module.build_task(args, device, info.world_size, info.rank)
        card = fit(task, loop_options(args), device, info)
        if card is not None:
            print(f"metrics: {card.metrics}", file=sys.stderr)
        return 0
    raise AssertionError(f"unhandled command {args.command}")  # argparse allows no other
