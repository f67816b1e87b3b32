"""Service settings: one pydantic-settings class, environment variables prefixed MODELSERVE_.

Nothing here runs at import: `Settings()` reads the environment when the app is built, and
every validator fails with a message naming the variable, so a bad deployment stops at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_model_dir() -> Path:
    """The repository's `models/` directory (where the shipped checkpoints live)."""
    import models  # light: models/__init__ imports torch, but only when the default is used

    return Path(models.__file__).resolve().parent


class Settings(BaseSettings):
    """Every knob of the service; see docs/api.md for the table."""

    model_config = SettingsConfigDict(env_prefix="MODELSERVE_", extra="ignore")

    model_dir: Path = Field(
        default_factory=default_model_dir,
        description="Directory whose subdirectories (with a config.json) are the models",
    )
    default_classifier: str = Field(
        default="alexnet-cifar10", description="Model used when ?model= is absent"
    )
    default_vae: str = Field(default="vae-mnist", description="VAE used when ?model= is absent")
    require_all_models: bool = Field(
        default=False, description="Refuse to start when any model directory fails to load"
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="auto: cuda when available"
    )
    torch_threads: int | None = Field(
        default=None,
        ge=1,
        description="Intra-op threads; default: CPU cores / WEB_CONCURRENCY workers",
    )
    inference_lanes: int = Field(
        default=1,
        ge=1,
        le=256,
        description=(
            "Batches run side by side per process (CPU), each on its own thread with "
            "torch_threads / lanes intra-op threads (all of them when it runs alone): more "
            "images/s for compute-bound models under load, each batch slower"
        ),
    )
    channels_last: bool = Field(
        default=True, description="Run convolutional models in channels-last layout"
    )
    compile: bool = Field(
        default=False, description="torch.compile the models (slow start, needs a compiler)"
    )
    prepack_linear: bool | Literal["auto"] = Field(
        default="auto",
        description=(
            "Pack fully connected weights once for oneDNN on the CPU (models/prepack.py), "
            "float32 results equal to rounding; auto: each layer timed at load both ways and "
            "packed only for the batch sizes where oneDNN is faster on this CPU; not with compile"
        ),
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description=(
            "Number format of the classifiers' weights and arithmetic (models/precision.py; "
            "softmax and top-k stay float32, VAEs always run float32); auto: bfloat16 on CUDA "
            "devices that support it, on a CPU with AMX-BF16 or AVX512-BF16 float32 and bfloat16 "
            "timed at load and the faster kept, float32 elsewhere (nothing timed)"
        ),
    )
    max_upload_bytes: int = Field(
        default=16 * 2**20, ge=1024, description="Largest request body, in bytes"
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Largest declared width*height of an upload"
    )
    max_sample_n: int = Field(default=64, ge=1, le=4096, description="Largest n of /sample")
    max_batch_images: int = Field(
        default=64, ge=1, description="Most images (or latent rows) in one request"
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Most items in one model batch"
    )
    max_impute_steps: int = Field(
        default=500, ge=1, le=100_000, description="Largest steps of /impute (sweeps per image)"
    )
    max_score_k: int = Field(
        default=1000, ge=1, le=1_000_000, description="Largest k of /score (samples per image)"
    )
    max_score_samples: int = Field(
        default=16_384,
        ge=1,
        description="Most importance samples, k x images, in one /score request",
    )
    batch_timeout_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=10_000.0,
        description="Most time a batch waits to fill while under load",
    )
    max_queue: int = Field(
        default=512, ge=1, description="Items waiting per model operation before 503 + Retry-After"
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0.0, description="Deadline of one request's inference (504 past it)"
    )
    graceful_timeout_s: float = Field(
        default=20.0, ge=0.0, description="SIGTERM: time in-flight requests get (python -m app)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO")
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line"
    )
    host: str = Field(default="0.0.0.0", description="Bind address (python -m app)")
    port: int = Field(default=8000, ge=1, le=65535, description="Port (python -m app)")
    api_key: SecretStr | None = Field(
        default=None, description="When set, every model endpoint requires the X-API-Key header"
    )
    open_probes: bool = Field(
        default=True, description="Keep /healthz, /readyz and /metrics open when api_key is set"
    )
    docs: bool = Field(
        default=True,
        description="Serve /docs, /redoc and /openapi.json (open even with api_key: they "
        "describe the API and hold no data; false: 404)",
    )
    ui: bool = Field(
        default=True,
        description="Serve the page for people at / (open even with api_key: it holds no data "
        "and calls the API with the key typed into it; false: 404)",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) else v

    @field_validator("model_dir")
    @classmethod
    def _model_dir_exists(cls, v: Path) -> Path:
        v = v.expanduser().resolve()
        if not v.is_dir():
            raise ValueError(f"model directory {v} does not exist (set MODELSERVE_MODEL_DIR)")
        return v

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().strip():
            return None  # MODELSERVE_API_KEY="" means off, as unset
        if v is not None and len(v.get_secret_value()) < 8:
            raise ValueError("api_key must be at least 8 characters")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # One request's items queue together: a request bigger than the queue could never run.
        for name in ("max_batch_size", "max_batch_images", "max_sample_n"):
            if getattr(self, name) > self.max_queue:
                raise ValueError(
                    f"MODELSERVE_{name.upper()} ({getattr(self, name)}) cannot exceed "
                    f"MODELSERVE_MAX_QUEUE ({self.max_queue})"
                )
        return self

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_ms / 1000.0


SECRETS = ("api_key",)


def describe_error(e: ValidationError) -> str:
    """A settings error for the operator: each variable and what is wrong with it, with the
    value given, except for secrets (a rejected API key must not reach the logs)."""
    lines = ["invalid MODELSERVE_* settings:"]
    for err in e.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"])
        where = f"MODELSERVE_{field.upper()}" if field else "settings"
        given = "" if not field or field in SECRETS else f" (given: {err.get('input')!r})"
        lines.append(f"  {where}: {err['msg']}{given}")
    return "\n".join(lines)
