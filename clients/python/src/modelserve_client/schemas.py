"""Request and response bodies of the HTTP API: their one definition.

The server validates requests and writes answers with these classes (`app.schemas` re-exports
them), and the client parses answers into them, so both sides always agree on the wire format.
Imports pydantic alone: the client package must stay light.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Latent codes are standard-normal a priori; anything beyond this is a client bug, not a query.
MAX_ABS_LATENT = 1e3

Latent = Annotated[float, Field(allow_inf_nan=False, ge=-MAX_ABS_LATENT, le=MAX_ABS_LATENT)]
Pixel = Annotated[float, Field(allow_inf_nan=False, ge=0.0, le=1.0)]
MAX_SEED = 2**63 - 1
# strict: JSON true/false or 1.0 are not seeds or mask values (the schema says integer)
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, strict=True)]
MaskValue = Annotated[int, Field(ge=0, le=1, strict=True)]
ImputeMethod = Literal["pseudo-gibbs", "mwg"]


class _Body(BaseModel):
    # Responses ignore unknown fields, so an older client keeps working with a newer server.
    model_config = ConfigDict(protected_namespaces=())


class _Request(BaseModel):
    # Requests refuse unknown fields: a typo ("zz") is a 422, not silently ignored.
    model_config = ConfigDict(extra="forbid")


# --- /classify -------------------------------------------------------------------------
class Prediction(_Body):
    """One class of the softmax, highest probability first in every list."""

    label: str = Field(description="Class name from the model card", examples=["cat"])
    index: int = Field(description="Class index in the model's output", examples=[3])
    probability: float = Field(description="Softmax probability in [0, 1]", examples=[0.91])


class ClassifyResult(_Body):
    """The top-k classes of one image."""

    predictions: list[Prediction] = Field(description="Top-k classes, most probable first")


class ClassifyResponse(ClassifyResult):
    """Answer to /classify with exactly one `image` part."""

    model: str = Field(description="Name of the model that answered", examples=["alexnet-cifar10"])


class ClassifyBatchResponse(_Body):
    """Answer to /classify with several `image` parts: one result per part, in upload order."""

    model: str = Field(description="Name of the model that answered", examples=["alexnet-cifar10"])
    results: list[ClassifyResult] = Field(description="One entry per uploaded image, in order")


# --- /encode ---------------------------------------------------------------------------
class EncodeRequest(_Request):
    """Pixels in [0, 1] (after any inversion the card asks for: the model's own input space).

    Accepted shapes: a list of flat rows of H*W values (one image each), one image as H rows
    of W values, or a list of images each H rows of W values.
    """

    pixels: list[list[Pixel]] | list[list[list[Pixel]]] = Field(
        description="(B, H*W) flat rows, (H, W) one image, or (B, H, W)",
        examples=[[[0.0] * 784]],
    )


class EncodeResult(_Body):
    """The approximate posterior q(z|x) = N(mean, exp(log_var)) of one image."""

    mean: list[float] = Field(
        description="Posterior mean, latent_dim values", examples=[[0.1, -0.3]]
    )
    log_var: list[float] = Field(
        description="Posterior log-variance, latent_dim values", examples=[[-2.0, -1.5]]
    )
    z: list[float] | None = Field(
        default=None,
        description="Reparameterised sample mean + exp(log_var / 2) * eps when sample=true",
        examples=[[0.12, -0.28]],
    )


class EncodeResponse(_Body):
    """Answer to /encode: always a list, one entry per image in input order."""

    model: str = Field(description="Name of the VAE that answered", examples=["vae-mnist"])
    latent_dim: int = Field(description="Size of each latent vector", examples=[20])
    results: list[EncodeResult] = Field(description="One entry per input image, in order")


# --- /decode and /sample ---------------------------------------------------------------
class DecodeRequest(_Request):
    """Latent codes to decode, one row per image."""

    z: list[list[Latent]] = Field(
        min_length=1,
        description=f"(B, latent_dim) finite values, |z| <= {MAX_ABS_LATENT:g}",
        examples=[[[0.0, 0.0], [1.0, -1.0]]],
    )


class DecodeResponse(_Body):
    """Decoder mean parameters (Bernoulli probabilities or Gaussian means) at full precision."""

    model: str = Field(description="Name of the VAE that answered", examples=["vae-mnist"])
    shape: list[int] = Field(description="[H, W] of every image", examples=[[28, 28]])
    images: list[list[float]] = Field(
        description="One flat row-major row of H*W values in [0, 1] per image, in input order",
        examples=[[[0.0] * 4]],
    )


class SampleResponse(DecodeResponse):
    """Images decoded from z ~ N(0, I), with the z's and the seed that drew them."""

    seed: int = Field(
        description="Seed of the draw; the same seed gives the same images", examples=[0]
    )
    z: list[list[float]] = Field(
        description="(n, latent_dim) latent codes used", examples=[[[0.1, 2.0]]]
    )


# --- /impute, /denoise and /score --------------------------------------------------------
class ScoreRequest(EncodeRequest):
    """Images to score, with the seed of the importance samples."""

    seed: Seed | None = Field(
        default=None,
        description="Seed of the samples (or in the query); the same for every image",
        examples=[0],
    )


class ImputeRequest(ScoreRequest):
    """Images and their masks, the same shapes; mask 1 = missing, 0 = observed."""

    mask: list[list[MaskValue]] | list[list[list[MaskValue]]] = Field(
        description="Shaped as `pixels`: 1 where the pixel is missing, 0 where it is observed",
        examples=[[[1] * 392 + [0] * 392]],
    )


class ImputeResponse(DecodeResponse):
    """Images with their missing pixels filled: observed pixels unchanged, missing ones the
    chain's mean decoder parameters (probabilities for a Bernoulli model)."""

    method: ImputeMethod = Field(description="Sampler that filled them", examples=["pseudo-gibbs"])
    steps: int = Field(description="Sweeps of the chain per image", examples=[100])
    seed: int = Field(description="Seed of the chain, the same for every image", examples=[0])


class ScoreResult(_Body):
    """Lower bound and importance-sampled log-likelihood of one image, in nats."""

    elbo: float = Field(description="Lower bound on log p(x), k-sample estimate", examples=[-98.2])
    log_likelihood: float = Field(
        description="log p(x) estimated with k importance samples (>= elbo)", examples=[-92.5]
    )
    k: int = Field(description="Importance samples used", examples=[100])


class ScoreResponse(_Body):
    """Answer to /score: one result per image, in input order."""

    model: str = Field(description="Name of the VAE that answered", examples=["vae-mnist"])
    likelihood: Literal["bernoulli", "gaussian"] = Field(
        description="bernoulli: log-probabilities of binary images; gaussian: log-densities",
        examples=["bernoulli"],
    )
    binarized: bool = Field(
        description="Whether the input was binarised at 0.5 before scoring (Bernoulli models)",
        examples=[True],
    )
    seed: int = Field(description="Seed of the importance samples", examples=[0])
    results: list[ScoreResult] = Field(description="One entry per input image, in order")


# --- /models ---------------------------------------------------------------------------
class InputSpecInfo(_Body):
    """How an uploaded image is turned into the model's input (mirrors the card)."""

    channels: int = Field(description="1: greyscale, 3: RGB", examples=[3])
    size: list[int] = Field(description="[H, W] of the network input", examples=[[28, 28]])
    resize: int | None = Field(
        description="Shorter side before centre crop; null: direct", examples=[32]
    )
    mean: list[float] = Field(
        description="Per-channel mean subtracted", examples=[[0.49, 0.48, 0.45]]
    )
    std: list[float] = Field(
        description="Per-channel std divided by", examples=[[0.25, 0.24, 0.26]]
    )
    invert: bool = Field(description="Grey levels inverted before normalising", examples=[False])
    background: int = Field(
        description="Grey level (0-255) that transparent areas of an upload become",
        examples=[255],
    )


class ModelInfo(_Body):
    """A loaded model and its card."""

    name: str = Field(
        description="Name used in the `model` query parameter", examples=["vae-mnist"]
    )
    kind: Literal["classifier", "vae"] = Field(
        description="Which endpoints serve it", examples=["vae"]
    )
    architecture: str = Field(description="Architecture family", examples=["vae"])
    task: str = Field(description="classification or generation", examples=["generation"])
    dataset: dict[str, Any] = Field(
        description="Training data of the card", examples=[{"name": "MNIST"}]
    )
    metrics: dict[str, float] = Field(
        description="Evaluation metrics of the card", examples=[{"elbo": -100.0}]
    )
    input: InputSpecInfo = Field(description="Preprocessing of uploaded images")
    labels: list[str] = Field(
        description="Class names in index order (classifiers)", examples=[["cat", "dog"]]
    )
    config: dict[str, Any] = Field(description="Architecture arguments", examples=[{"latent": 20}])
    num_parameters: int = Field(description="Number of weights", examples=[1000])
    weights_sha256: str = Field(description="Digest of model.safetensors", examples=["ab12..."])
    code_version: str = Field(description="Git commit that trained it", examples=["2bb0459"])
    created_at: str = Field(
        description="When the checkpoint was written", examples=["2025-01-01T00:00:00+00:00"]
    )
    device: str = Field(description="Device it runs on", examples=["cpu"])
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32",  # what servers without MODELSERVE_DTYPE run, for clients of them
        description="Number format its weights and arithmetic run in (MODELSERVE_DTYPE); "
        "probabilities are computed in float32",
        examples=["bfloat16"],
    )
    default: bool = Field(description="Whether it is the default of its kind", examples=[True])


class FailedModel(_Body):
    """A model directory that could not be loaded, and why."""

    name: str = Field(description="Directory name", examples=["vae-frey"])
    error: str = Field(description="What went wrong, naming the file", examples=["sha256 mismatch"])


class ModelsResponse(_Body):
    """Every loaded model, and every model directory that failed to load."""

    models: list[ModelInfo] = Field(description="Loaded models")
    failed: list[FailedModel] = Field(description="Directories that failed to load")


# --- health ----------------------------------------------------------------------------
class HealthResponse(_Body):
    """Liveness: the process answers."""

    status: Literal["ok"] = Field(description="Always ok", examples=["ok"])


class ReadyResponse(_Body):
    """Readiness: models loaded and warmed."""

    ready: bool = Field(
        description="True once at least one model is loaded and warmed", examples=[True]
    )
    models: list[str] = Field(description="Names of the loaded models", examples=[["vae-mnist"]])
    failed: list[FailedModel] = Field(description="Model directories that failed to load")
    detail: str = Field(description="Human-readable state", examples=["ready"])


# --- errors ----------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer."""

    detail: str = Field(description="What went wrong", examples=["unknown model 'foo'"])
    status: int = Field(description="HTTP status code", examples=[404])
    request_id: str | None = Field(
        default=None, description="Echo of X-Request-ID, to quote in bug reports", examples=["3f2a"]
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="Field-level validation errors (422 only)"
    )
