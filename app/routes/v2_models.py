"""The v2 models of the loaded predictors: which tensors each takes and gives, and how they
reach the predictor's hooks and batchers (`SIGNATURES`, one entry per operation).

A classifier is served under its own name, each VAE operation as `<vae>.<op>`. A model's one
version is its weights' sha256 prefix (as in `modelserve_model_info`).
Shapes: B batch, N classes, C/H/W the classifier's input image, Z latent, D = H*W pixels.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app import oip, timing
from app.predictors import ClassifierPredictor, Predictor, VAEPredictor
from app.registry import Registry, UnknownModel
from app.routes.uploads import decode_uploads, infer
from app.routes.vae import MAX_SEED
from app.schemas import MAX_ABS_LATENT
from app.settings import Settings


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of a v2 signature; symbolic dimensions resolve per model (`_dims`):
    B batch (any size, -1 in metadata), N classes, C/H/W input image, Z latent, D = H*W."""

    name: str
    datatype: str
    shape: tuple[int | str, ...]
    optional: bool = False
    bounds: tuple[float, float] | None = None  # floats: finite, and within these when given
    classes: bool = False  # answers Triton's classification extension


@dataclass
class Call:
    """One v2 inference: what a signature's runner needs to reach the model."""

    request: Request
    registry: Registry
    settings: Settings
    predictor: Any  # the predictor of the signature's kind

    async def infer(self, op: str, items: list[Any]) -> list[Any]:
        return await infer(self.request, self.registry, self.predictor, op, items)

    async def images(self, blobs: Any) -> list[Any]:
        """BYTES elements, each an encoded image file -> the predictor's decoded inputs."""
        return await decode_uploads(list(blobs), self.predictor, self.settings)


Runner = Callable[[Call, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Signature:
    """A v2 model: alternative input sets (exactly one is sent), its outputs, its runner."""

    inputs: tuple[tuple[TensorSpec, ...], ...]
    outputs: tuple[TensorSpec, ...]
    run: Runner


def _stack(rows: list[Any]) -> Any:
    """Per-item output tensors -> one (B, ...) float32 array."""
    return np.stack([r.numpy() for r in rows]).astype(np.float32, copy=False)


async def _classify(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    image = x["image"]  # BYTES (B,) files, or FP32 (B, C, H, W) already in model space
    items = await call.images(image) if image.dtype == object else oip.rows(image)
    return {"probabilities": _stack(await call.infer("classify", items))}


async def _encode(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    p: VAEPredictor = call.predictor
    if "image" in x:
        items = await call.images(x["image"])
    else:
        with timing.phase("decode"):
            items = await run_in_threadpool(p.decode_pixels, list(x["pixels"]))
    posterior = await call.infer("encode", items)  # (mean, log_var) per image
    return {"mean": _stack([m for m, _ in posterior]), "log_var": _stack([v for _, v in posterior])}


async def _decode(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    p: VAEPredictor = call.predictor
    zs = p.decode_latents(x["z"].tolist())
    return {"images": _stack(await call.infer("decode", zs))}


async def _sample(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    p: VAEPredictor = call.predictor
    n, limit = int(x["n"][0]), call.settings.max_sample_n
    if not 1 <= n <= limit:
        raise oip.BadTensor(f"n={n}; it must be between 1 and max_sample_n={limit}")
    seed = int(x["seed"][0]) if "seed" in x else secrets.randbelow(2**31)
    if not 0 <= seed <= MAX_SEED:
        raise oip.BadTensor(f"seed={seed}; it must be between 0 and {MAX_SEED}")
    zs = p.prior_latents(n, seed)
    return {"images": _stack(await call.infer("decode", zs)), "z": _stack(zs)}


IMAGE_FILES = TensorSpec("image", "BYTES", ("B",))
PIXELS = TensorSpec("pixels", "FP32", ("B", "D"), bounds=(0.0, 1.0))
LATENTS = TensorSpec("z", "FP32", ("B", "Z"), bounds=(-MAX_ABS_LATENT, MAX_ABS_LATENT))
IMAGES = TensorSpec("images", "FP32", ("B", "D"))

# kind -> operation -> signature. A classifier serves under its model's name (operation ""),
# each VAE operation as `<vae>.<op>`; a new operation is one entry here.
SIGNATURES: dict[str, dict[str, Signature]] = {
    "classifier": {
        "": Signature(
            inputs=((IMAGE_FILES,), (TensorSpec("image", "FP32", ("B", "C", "H", "W")),)),
            outputs=(TensorSpec("probabilities", "FP32", ("B", "N"), classes=True),),
            run=_classify,
        ),
    },
    "vae": {
        "encode": Signature(
            inputs=((IMAGE_FILES,), (PIXELS,)),
            outputs=(
                TensorSpec("mean", "FP32", ("B", "Z")),
                TensorSpec("log_var", "FP32", ("B", "Z")),
            ),
            run=_encode,
        ),
        "decode": Signature(inputs=((LATENTS,),), outputs=(IMAGES,), run=_decode),
        "sample": Signature(
            inputs=(
                (TensorSpec("n", "INT64", (1,)), TensorSpec("seed", "INT64", (1,), optional=True)),
            ),
            outputs=(IMAGES, TensorSpec("z", "FP32", ("B", "Z"))),
            run=_sample,
        ),
    },
}


def _dims(p: Predictor) -> dict[str, int]:
    """The model's sizes for the symbolic dimensions of `TensorSpec`."""
    h, w = p.card.input.size
    dims = {"B": -1, "C": p.card.input.channels, "H": h, "W": w}
    if isinstance(p, ClassifierPredictor):
        dims["N"] = p.num_classes
    if isinstance(p, VAEPredictor):
        dims["Z"], dims["D"] = p.latent_dim, math.prod(p.image_shape)
    return dims


# --- v2 models -------------------------------------------------------------------------
@dataclass(frozen=True)
class V2Model:
    """One (predictor, operation) as the protocol sees it."""

    name: str
    predictor: Predictor
    signature: Signature

    @property
    def version(self) -> str:
        return self.predictor.card.weights_sha256[:12]

    def shape(self, spec: TensorSpec) -> list[int]:
        dims = _dims(self.predictor)
        return [d if isinstance(d, int) else dims[d] for d in spec.shape]

    def metadata(self) -> dict[str, Any]:
        seen: dict[str, TensorSpec] = {}
        for alternative in self.signature.inputs:  # each name once, its first datatype
            for s in alternative:
                seen.setdefault(s.name, s)
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "pytorch",
            "inputs": [self._tensor(s) for s in seen.values()],
            "outputs": [self._tensor(s) for s in self.signature.outputs],
        }

    def _tensor(self, s: TensorSpec) -> dict[str, Any]:
        return {"name": s.name, "datatype": s.datatype, "shape": self.shape(s)}

    def describe(self, specs: tuple[TensorSpec, ...]) -> str:
        return " + ".join(f"{s.name} {s.datatype} {self.shape(s)}" for s in specs)


def v2_models(registry: Registry) -> list[V2Model]:
    """Every v2 model of the loaded predictors."""
    return [
        V2Model(p.name if not op else f"{p.name}.{op}", p, sig)
        for p in registry.predictors.values()
        for op, sig in SIGNATURES.get(p.kind, {}).items()
    ]


def resolve(registry: Registry, name: str, version: str | None) -> V2Model:
    """The v2 model `name` (at `version` if given), or 404 naming the served ones."""
    registry.require_ready()
    models = v2_models(registry)
    found = next((m for m in models if m.name == name), None)
    if found is None:
        raise UnknownModel(f"unknown model {name!r}; served: {sorted(m.name for m in models)}")
    if version is not None and version != found.version:
        raise UnknownModel(f"model {name!r} has version {found.version!r} only, not {version!r}")
    return found


def match(model: V2Model, x: dict[str, Any]) -> tuple[TensorSpec, ...]:
    """The input set the request sent, its shapes and values checked; 400 naming the
    signature otherwise."""
    sig = model.signature
    ways = " or ".join(model.describe(alt) for alt in sig.inputs)
    chosen = None
    for alt in sig.inputs:
        specs = {s.name: s for s in alt}
        required = {s.name for s in alt if not s.optional}
        if required <= x.keys() <= specs.keys() and all(
            oip.datatype_of(x[n]) == specs[n].datatype for n in x
        ):
            chosen = tuple(specs[n] for n in x)
            break
    if chosen is None:
        given = ", ".join(f"{n} {oip.datatype_of(a)} {list(a.shape)}" for n, a in x.items())
        raise oip.BadTensor(f"model {model.name} takes {ways}; got {given}")
    batch = set()
    for s in chosen:
        a, want = x[s.name], model.shape(s)
        if a.ndim != len(want) or any(w not in (-1, d) for w, d in zip(want, a.shape, strict=True)):
            raise oip.BadTensor(
                f"input {s.name} has shape {list(a.shape)}; model {model.name} takes {want}"
            )
        if s.shape and s.shape[0] == "B":
            batch.add(a.shape[0])
        if s.bounds is not None or a.dtype.kind == "f":
            lo, hi = s.bounds or (-math.inf, math.inf)
            if not (np.isfinite(a).all() and ((a >= lo) & (a <= hi)).all()):
                raise oip.BadTensor(f"input {s.name} must hold finite values in [{lo:g}, {hi:g}]")
    if len(batch) > 1:
        raise oip.BadTensor(f"inputs disagree on the batch size: {sorted(batch)}")
    if 0 in batch:
        raise oip.BadTensor("empty batch: send at least one item")
    return chosen


def apply_classification(model: V2Model, request: oip.InferRequest, out: dict[str, Any]) -> None:
    """Triton's classification extension: an output asked with `classification: k` becomes
    BYTES (B, k) "score:index:label", most probable first (label absent without labels)."""
    specs = {s.name: s for s in model.signature.outputs}
    labels = model.predictor.card.labels
    for o in request.outputs or []:
        k = (o.parameters or {}).get("classification")
        if k is None:
            continue
        if not specs[o.name].classes:
            raise oip.BadTensor(f"output {o.name} of {model.name} has no classes")
        scores = out[o.name]  # (B, N)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= scores.shape[1]:
            raise oip.BadTensor(f"classification must be 1..{scores.shape[1]}; got {k!r}")
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out[o.name] = np.array(
            [
                [
                    ":".join(
                        [np.format_float_positional(row[i], trim="-"), str(i)]
                        + ([labels[i]] if i < len(labels) else [])
                    ).encode()
                    for i in idx
                ]
                for row, idx in zip(scores, top, strict=True)
            ],
            dtype=object,
        ).reshape(len(scores), k)
