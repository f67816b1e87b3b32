"""LitServe contender: the same checkpoints and preprocessing behind LitServe's own batching.

Each model kind is one or more `LitAPI`s with the LitServe hooks (setup / decode_request / batch
/ predict / unbatch / encode_response); LitServe's batching is configured with
`max_batch_size` and `batch_timeout` equal to our service's (`MODELSERVE_MAX_BATCH_SIZE`,
`MODELSERVE_BATCH_TIMEOUT_MS`). Preprocessing is the service's own, split the same way
(`decode_request` decodes one upload to uint8 pixels, `batch` normalises the stacked batch:
`benchmarks.ops.decode_pixels` / `to_model_batch`) and the model work is `benchmarks.ops`, so
only the serving machinery differs.

Endpoints (POST; one item per request, which is what the load generator sends):
* classifier model: `/classify` multipart `image` -> {"model", "predictions": [top 5]}
* VAE model: `/encode` multipart `image` -> {"model", "latent_dim", "results": [{mean, log_var}]};
  `/decode` JSON {"z": [[...]]} -> {"model", "shape", "images": [[...]]};
  `/sample` JSON {"n": 1, "seed": s} -> like /decode plus "z".
Probes: LitServe's `/health` (200 once every worker has run `setup`).

No `from __future__ import annotations` here: LitServe reads `decode_request`'s annotation at run
time and only hands over the raw (form or JSON) payload when it is exactly `fastapi.Request`.

    python -m benchmarks.litserve_server runs/bench/models/full/alexnet-imagenet-random --port 8100
"""

import argparse
import os
from pathlib import Path
from typing import Any

import litserve as ls
import torch
from fastapi import Request
from torch import Tensor

from app.images import stack_pixels
from app.predictors import model_dtype
from benchmarks import ops
from models.checkpoint import read_card
from models.precision import DTYPES, DtypeSetting


class _ModelAPI(ls.LitAPI):
    """Loads one checkpoint per inference worker, with a fixed intra-op thread count."""

    def __init__(
        self,
        model_dir: Path,
        api_path: str,
        max_batch_size: int,
        batch_timeout: float,
        threads: int,
        dtype: DtypeSetting = "float32",
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size, batch_timeout=batch_timeout, api_path=api_path
        )
        self.model_dir, self.threads, self.dtype_setting = model_dir, threads, dtype

    def setup(self, device: str) -> None:
        # Each LitServe worker is its own process: threads per worker = cores / workers, so the
        # workers together use every core without oversubscribing them.
        torch.set_num_threads(self.threads)
        self.model, self.card = ops.load(
            self.model_dir,
            channels_last=True,
            device=device,
            max_batch_size=self.max_batch_size,
            dtype=self.dtype_setting,
        )
        self.device, self.dtype = device, model_dtype(self.model)  # batches are cast to it
        self.channels_last = self.card.architecture == "alexnet"

    def _image(self, request: Any) -> Tensor:
        # request: the multipart form (starlette FormData); "image" is an UploadFile.
        return ops.decode_pixels([request["image"].file.read()], self.card)[0]  # (C, H, W) uint8

    def unbatch(self, output: list[Any]) -> list[Any]:
        # predict() already returns one plain-Python entry per request.
        return output

    def batch(self, inputs: list[Tensor]) -> Tensor:
        pixels = stack_pixels(inputs)
        return ops.to_model_batch(pixels, self.card, self.channels_last, self.device, self.dtype)


class ClassifyAPI(_ModelAPI):
    """POST /classify: top-5 classes of one uploaded image."""

    def decode_request(self, request: Request) -> Tensor:
        return self._image(request)

    def predict(self, x: Tensor) -> list[tuple[list[float], list[int]]]:
        x = x if x.ndim == 4 else self.batch([x])  # max_batch_size 1: LitServe skips batch()
        probs, idx = ops.classify(self.model, x, top_k=5)
        return list(zip(probs.tolist(), idx.tolist(), strict=True))

    def encode_response(self, output: tuple[list[float], list[int]]) -> dict[str, Any]:
        if isinstance(output, list) and len(output) == 1:  # unbatched path
            output = output[0]
        probs, idx = output
        labels = self.card.labels
        return {
            "model": self.card.name,
            "predictions": [
                {"label": labels[i], "index": i, "probability": p}
                for p, i in zip(probs, idx, strict=True)
            ],
        }


class EncodeAPI(_ModelAPI):
    """POST /encode: posterior mean and log-variance of one uploaded image."""

    def decode_request(self, request: Request) -> Tensor:
        return self._image(request)

    def predict(self, x: Tensor) -> list[tuple[list[float], list[float]]]:
        x = x if x.ndim == 4 else self.batch([x])  # max_batch_size 1: LitServe skips batch()
        mean, log_var = ops.encode(self.model, x)
        return list(zip(mean.tolist(), log_var.tolist(), strict=True))

    def encode_response(self, output: Any) -> dict[str, Any]:
        mean, log_var = output[0] if len(output) == 1 else output
        return {
            "model": self.card.name,
            "latent_dim": len(mean),
            "results": [{"mean": mean, "log_var": log_var, "z": None}],
        }


class DecodeAPI(_ModelAPI):
    """POST /decode: decoder mean image of one latent row, as JSON floats."""

    def decode_request(self, request: Request) -> Tensor:
        return torch.tensor(request["z"][0], dtype=torch.float32)  # (Z,)

    def batch(self, inputs: list[Tensor]) -> Tensor:
        return torch.stack(inputs)

    def predict(self, z: Tensor) -> list[list[float]]:
        images = ops.decode(self.model, z if z.ndim == 2 else z[None])  # (B, 1, H, W)
        return images.flatten(1).tolist()

    def encode_response(self, output: list[Any]) -> dict[str, Any]:
        pixels = output[0] if isinstance(output[0], list) else output
        return {"model": self.card.name, "shape": list(self.card.input.size), "images": [pixels]}


class SampleAPI(_ModelAPI):
    """POST /sample: one prior draw for a seed, decoded; the z used comes back too."""

    def decode_request(self, request: Request) -> int:
        return int(request.get("seed", 0))

    def batch(self, inputs: list[int]) -> list[int]:  # type: ignore[override]
        return inputs

    def predict(self, seeds: Any) -> list[tuple[list[float], list[float]]]:
        z, images = ops.sample(self.model, seeds if isinstance(seeds, list) else [seeds])
        return list(zip(z.tolist(), images.flatten(1).tolist(), strict=True))

    def encode_response(self, output: Any) -> dict[str, Any]:
        z, pixels = output[0] if len(output) == 1 else output
        return {
            "model": self.card.name,
            "shape": list(self.card.input.size),
            "images": [pixels],
            "z": [z],
        }


def build_server(
    model_dir: Path,
    workers: int,
    max_batch_size: int,
    batch_timeout: float,
    fast_queue: bool,
    accelerator: str = "cpu",
    dtype: DtypeSetting = "float32",
) -> ls.LitServer:
    """A LitServer with the endpoints of `model_dir`'s model kind, on "cpu" or "cuda", a
    classifier in the number format `dtype` (VAEs stay float32)."""
    card = read_card(model_dir)
    threads = max(1, (os.cpu_count() or 1) // workers)
    kinds: dict[str, list[tuple[type[_ModelAPI], str]]] = {
        "alexnet": [(ClassifyAPI, "/classify")],
        "vae": [(EncodeAPI, "/encode"), (DecodeAPI, "/decode"), (SampleAPI, "/sample")],
    }
    apis = [
        cls(model_dir, path, max_batch_size, batch_timeout, threads, dtype)
        for cls, path in kinds[card.architecture]
    ]
    return ls.LitServer(
        apis,
        accelerator=accelerator,
        workers_per_device=workers,
        fast_queue=fast_queue,
        timeout=60,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model_dir", type=Path, help="a checkpoint directory (config.json + weights)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1, help="inference worker processes per API")
    parser.add_argument(
        "--api-servers",
        type=int,
        default=None,
        help="HTTP server processes (LitServe default: = workers)",
    )
    parser.add_argument("--accelerator", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="float32",
        help="the classifier's number format, as MODELSERVE_DTYPE (VAEs stay float32)",
    )
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout-ms", type=float, default=2.0)
    parser.add_argument(
        "--no-fast-queue",
        dest="fast_queue",
        action="store_false",
        help="multiprocessing queues instead of ZeroMQ",
    )
    args = parser.parse_args(argv)
    server = build_server(
        args.model_dir,
        args.workers,
        args.max_batch_size,
        args.batch_timeout_ms / 1000.0,
        args.fast_queue,
        args.accelerator,
        args.dtype,
    )
    server.run(
        host=args.host,
        port=args.port,
        num_api_servers=args.api_servers,
        log_level="warning",
        generate_client_file=False,
    )


if __name__ == "__main__":
    main()
