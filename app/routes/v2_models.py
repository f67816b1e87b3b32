"""The v2 models of the loaded predictors: which tensors each takes and gives, and how they
reach the predictor's hooks and batchers (`SIGNATURES`, one entry per operation).

A classifier is served under its own name, each VAE operation as `<vae>.<op>`. A model's one
version is its weights' sha256 prefix (as in `modelserve_model_info`).
Shapes: B batch, N classes, C/H/W the classifier's input image, Z latent, D = H*W pixels.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
from fastapi import Request
from starlette.concurrency import run_in_threadpool

from app import oip, timing
from app.marginal import ScoreItem
from app.predictors import ClassifierPredictor, Predictor
from app.registry import Registry, UnknownModel
from app.routes.marginal import (
    DEFAULT_K,
    DEFAULT_METHOD,
    check_score,
    impute_steps,
    masked_uploads,
    resolve_seed,
)
from app.routes.uploads import decode_uploads, infer
from app.schemas import MAX_ABS_LATENT, ImputeMethod
from app.settings import Settings
from app.vae_predictor import VAEPredictor


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


def _scalar(x: dict[str, Any], name: str) -> int | None:
    """An optional INT64 [1] input's value."""
    return int(x[name][0]) if name in x else None


async def _rows(call: Call, a: Any, name: str) -> list[Any]:
    """FP32 (B, D) rows -> B tensors (1, H, W), as our routes decode JSON pixels."""
    p: VAEPredictor = call.predictor
    with timing.phase("decode"):
        return await run_in_threadpool(p.decode_pixels, list(a), name)


async def _vae_inputs(call: Call, x: dict[str, Any]) -> list[Any]:
    """`image` BYTES files or FP32 `pixels` in the model's [0, 1] space -> the VAE's inputs."""
    if "image" in x:
        return await call.images(x["image"])
    return await _rows(call, x["pixels"], "pixels")


async def _encode(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    items = await _vae_inputs(call, x)
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
    zs = p.prior_latents(n, resolve_seed(_scalar(x, "seed")))
    return {"images": _stack(await call.infer("decode", zs)), "z": _stack(zs)}


METHODS: tuple[str, ...] = get_args(ImputeMethod)


def _method(x: dict[str, Any]) -> str:
    """The optional BYTES [1] `method` input, one of `METHODS`; /impute's default otherwise."""
    if "method" not in x:
        return DEFAULT_METHOD
    raw = x["method"][0]
    name = raw.decode(errors="replace")
    if name not in METHODS:
        raise oip.BadTensor(f"method {name!r}; it must be one of {', '.join(METHODS)}")
    return name


async def _impute(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    """As /impute: image files with mask files (white = missing), or pixels with a 0/1 mask."""
    p: VAEPredictor = call.predictor
    steps, method = impute_steps(_scalar(x, "steps"), call.settings), _method(x)
    if "image" in x:
        pixels, masks = await masked_uploads(p, call.settings, list(x["image"]), list(x["mask"]))
    else:
        if not np.isin(x["mask"], (0.0, 1.0)).all():
            raise oip.BadTensor("mask must hold 0 (observed) or 1 (missing) only")
        pixels, masks = await _vae_inputs(call, x), await _rows(call, x["mask"], "mask")
    items = p.impute_items(pixels, masks, steps, method, resolve_seed(_scalar(x, "seed")))
    return {"images": _stack(await call.infer("impute", items))}


async def _denoise(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    return {"images": _stack(await call.infer("denoise", await _vae_inputs(call, x)))}


async def _score(call: Call, x: dict[str, Any]) -> dict[str, Any]:
    """As /score: (elbo, log p(x)) per image in nats, k importance samples each."""
    k = _scalar(x, "k")
    k = DEFAULT_K if k is None else k
    batch = x["image"] if "image" in x else x["pixels"]
    check_score(k, len(batch), call.settings)  # before any decoding
    seed = resolve_seed(_scalar(x, "seed"))
    items = [ScoreItem(im, k, seed) for im in await _vae_inputs(call, x)]
    scores = await call.infer("score", items)  # (elbo, log p(x)) per image
    a = np.array(scores, dtype=np.float32).reshape(-1, 2)  # (B, 2)
    return {"elbo": a[:, 0].copy(), "log_likelihood": a[:, 1].copy()}


IMAGE_FILES = TensorSpec("image", "BYTES", ("B",))
PIXELS = TensorSpec("pixels", "FP32", ("B", "D"), bounds=(0.0, 1.0))
LATENTS = TensorSpec("z", "FP32", ("B", "Z"), bounds=(-MAX_ABS_LATENT, MAX_ABS_LATENT))
IMAGES = TensorSpec("images", "FP32", ("B", "D"))
MASK_FILES = TensorSpec("mask", "BYTES", ("B",))  # one per image, its size: white = missing
MASK = TensorSpec("mask", "FP32", ("B", "D"), bounds=(0.0, 1.0))  # 1 = missing, 0 = observed
SEED = TensorSpec("seed", "INT64", (1,), optional=True)
IMPUTE_OPTIONS = (
    TensorSpec("steps", "INT64", (1,), optional=True),
    SEED,
    TensorSpec("method", "BYTES", (1,), optional=True),
)
SCORE_OPTIONS = (TensorSpec("k", "INT64", (1,), optional=True), SEED)

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
            inputs=((TensorSpec("n", "INT64", (1,)), SEED),),
            outputs=(IMAGES, TensorSpec("z", "FP32", ("B", "Z"))),
            run=_sample,
        ),
        "impute": Signature(
            inputs=(
                (IMAGE_FILES, MASK_FILES, *IMPUTE_OPTIONS),
                (PIXELS, MASK, *IMPUTE_OPTIONS),
            ),
            outputs=(IMAGES,),
            run=_impute,
        ),
        "denoise": Signature(inputs=((IMAGE_FILES,), (PIXELS,)), outputs=(IMAGES,), run=_denoise),
        "score": Signature(
            inputs=((IMAGE_FILES, *SCORE_OPTIONS), (PIXELS, *SCORE_OPTIONS)),
            outputs=(
                TensorSpec("elbo", "FP32", ("B",)),
                TensorSpec("log_likelihood", "FP32", ("B",)),
            ),
            run=_score,
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
