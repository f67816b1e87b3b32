"""The loaded predictors of one app, their batchers and the readiness state (on app.state).

Faults at start: a missing model directory fails settings validation (the service refuses to
start); a directory with no model in it refuses to start too. A model whose checkpoint is
corrupt, truncated, fails its sha256 or does not match its card is logged (naming the file) and
left out; the service serves the others and `/readyz` and `/models` list it under `failed`.
`require_all_models=true` makes any such failure fatal at start instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import torch

from app import schemas, timing
from app.batching import Batcher, BatchStats
from app.images import register_formats
from app.lanes import Lanes
from app.loading import load_predictor
from app.metrics import Metrics
from app.predictors import ClassifierPredictor, Predictor
from app.settings import Settings
from app.vae_predictor import VAEPredictor
from models.checkpoint import CARD_FILE
from models.precision import dtype_name

log = logging.getLogger("app.registry")


class UnknownModel(LookupError):
    """No loaded model of the wanted kind has this name (answered 404)."""


class NoModel(RuntimeError):
    """No model of the wanted kind is loaded, and none was named (answered 503)."""


class NotReady(RuntimeError):
    """Models are still loading, or none loaded (answered 503 + Retry-After)."""


def resolve_device(setting: str) -> torch.device:
    """auto -> cuda when available; cuda without a GPU is a start-up error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MODELSERVE_DEVICE=cuda but torch sees no CUDA device")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


def default_threads() -> int:
    """CPU cores shared among uvicorn workers, so workers x threads never oversubscribes."""
    workers = max(1, int(os.environ.get("WEB_CONCURRENCY", "1") or 1))
    return max(1, (os.cpu_count() or 1) // workers)


def model_dirs(root: Path) -> list[Path]:
    """Subdirectories of `root` holding a model card, sorted by name."""
    return sorted(p for p in root.iterdir() if (p / CARD_FILE).is_file())


class Registry:
    """Name -> predictor, defaults per kind, one batcher per (model, op), readiness."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.device = resolve_device(settings.device)
        self.predictors: dict[str, Predictor] = {}
        self.failed: dict[str, str] = {}
        self.batchers: dict[tuple[str, str], Batcher[Any, Any]] = {}
        self.loaded = False  # the load attempt finished (ready = loaded and any model)
        self.threads = settings.torch_threads or default_threads()
        lanes = settings.inference_lanes
        if self.device.type != "cpu" and lanes > 1:
            log.warning("inference_lanes=%d is for CPUs; on %s one lane", lanes, self.device)
            lanes = 1
        if lanes > self.threads:
            log.warning("inference_lanes=%d > %d threads: %d lanes", lanes, *[self.threads] * 2)
            lanes = self.threads
        # Batches of all models share the lanes. torch.set_num_threads on a lane thread sets
        # that thread's OpenMP team size: each thread starts from the OpenMP default (every
        # core), not from the main thread's setting, and oneDNN and MKL read the thread's own
        # value, so without it a worker set to 1 thread still forks a team of all cores per
        # convolution, whose spin-waiting threads take a core from the other workers.
        self.lanes = Lanes(lanes, self.threads, set_threads=torch.set_num_threads)
        self.executor = self.lanes.executor  # load and warm-up run on a lane thread
        self.dirs = model_dirs(settings.model_dir)
        if not self.dirs:
            raise RuntimeError(
                f"no models in {settings.model_dir}: expected subdirectories with {CARD_FILE}"
            )

    @property
    def ready(self) -> bool:
        return self.loaded and bool(self.predictors)

    # --- loading (blocking; run in a thread) ------------------------------------------
    def load_all(self) -> None:
        """Load and warm every model directory; failures are recorded, not raised."""
        register_formats()  # the image decoders too, not only the models
        s = self.settings
        loaded: dict[str, Predictor] = {}
        failed: dict[str, str] = {}
        for d in self.dirs:
            try:
                p = load_predictor(
                    d,
                    self.device,
                    s.channels_last,
                    s.compile,
                    s.prepack_linear,
                    s.max_batch_size,
                    s.dtype,
                )
                p.warmup(s.max_batch_size)
                if self.lanes.per_lane != self.threads:  # batches side by side run on fewer
                    self.lanes.use(self.lanes.per_lane)
                    p.warmup(s.max_batch_size)
                    self.lanes.use(self.threads)
            except Exception as e:  # any fault of one model must not stop the others
                log.error("model %s not loaded: %s", d.name, e)
                failed[d.name] = str(e)
                continue
            if p.name in loaded:
                failed[d.name] = f"{d}: duplicate model name {p.name!r}"
                continue
            loaded[p.name] = p
            c = p.card
            dtype = dtype_name(p.dtype)
            self.metrics.model_info.labels(
                p.name,
                c.architecture,
                c.dataset.name,
                str(self.device),
                c.weights_sha256[:12],
                dtype,
            ).set(1)
            log.info("model %s loaded from %s on %s in %s", p.name, d, self.device, dtype)
        for name in failed:
            self.metrics.model_load_failed.labels(name).set(1)
        # Published whole, so probes never see a half-built dict.
        self.predictors, self.failed = loaded, failed

    def start(self) -> None:
        """Create the batchers on the running loop and mark the registry loaded."""
        s = self.settings
        self.metrics.queue_limit.set(s.max_queue)
        for p in self.predictors.values():
            for op in p.ops:
                depth = self.metrics.queue_depth.labels(p.name, op)
                depth.set(0)  # the series exists from the start: empty, and this worker ready
                self.batchers[p.name, op] = Batcher(
                    p.batch_fn(op),
                    max_batch_size=s.max_batch_size,
                    max_wait_s=s.batch_timeout_s,
                    max_queue=s.max_queue,
                    lanes=self.lanes,
                    observer=self._observer(p.name, op),
                    on_queue=depth.set,
                )
                self.batchers[p.name, op].start()
        self.loaded = True

    async def load(self) -> None:
        """Load and warm up on the inference thread (so its thread team is the one warmed),
        then start serving."""
        await asyncio.get_running_loop().run_in_executor(self.executor, self.load_all)
        self.start()
        log.info("ready: %s loaded, %d failed", sorted(self.predictors), len(self.failed))

    async def close(self) -> None:
        """Finish queued work, stop the batchers and the inference thread."""
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))
        self.lanes.shutdown()

    def _observer(self, model: str, op: str) -> Any:
        m = self.metrics
        duration, size = m.inference_duration.labels(model, op), m.batch_size.labels(model, op)
        items, errors = m.items.labels(model, op), m.errors.labels(model, op)

        def observe(stats: BatchStats) -> None:
            if stats.error is not None:
                errors.inc()
                log.error("model %s %s batch of %d failed: %r", model, op, stats.size, stats.error)
                return
            duration.observe(stats.seconds)
            size.observe(stats.size)
            items.inc(stats.size)

        return observe

    # --- lookup and inference ----------------------------------------------------------
    def require_ready(self) -> None:
        """NotReady unless loading finished with at least one model."""
        if not self.loaded:
            raise NotReady("models are loading; retry shortly")
        if not self.predictors:
            raise NotReady("no model could be loaded; see /readyz")

    def default_name(self, kind: str) -> str | None:
        """The configured default of `kind` if loaded, else the first loaded of that kind."""
        wanted = (
            self.settings.default_classifier if kind == "classifier" else self.settings.default_vae
        )
        names = [n for n, p in self.predictors.items() if p.kind == kind]
        return wanted if wanted in names else (names[0] if names else None)

    def get(self, name: str | None, kind: str) -> Predictor:
        """The loaded model `name` (default of `kind` when None) or UnknownModel."""
        self.require_ready()
        name = name or self.default_name(kind)
        if name is None:
            failed = "; ".join(f"{n}: {e}" for n, e in sorted(self.failed.items()))
            raise NoModel(
                f"no {kind} model is loaded"
                + (f" (failed to load: {failed})" if failed else f" in {self.settings.model_dir}")
            )
        p = self.predictors.get(name or "")
        if p is None or p.kind != kind:
            known = sorted(n for n, q in self.predictors.items() if q.kind == kind)
            raise UnknownModel(f"unknown {kind} model {name!r}; loaded: {known}")
        return p

    def classifier(self, name: str | None) -> ClassifierPredictor:
        p = self.get(name, "classifier")
        assert isinstance(p, ClassifierPredictor)
        return p

    def vae(self, name: str | None) -> VAEPredictor:
        p = self.get(name, "vae")
        assert isinstance(p, VAEPredictor)
        return p

    async def infer(self, p: Predictor, op: str, items: list[Any]) -> list[Any]:
        """Run `items` through the (model, op) batcher under the request deadline; the time
        they queued and ran goes to the request's Server-Timing."""
        done = await self.batchers[p.name, op].submit_timed(items, self.settings.request_timeout_s)
        timing.record("queue", done.queued)
        timing.record("infer", done.ran)
        return done.outputs

    # --- views -------------------------------------------------------------------------
    def model_infos(self) -> list[schemas.ModelInfo]:
        defaults = {self.default_name("classifier"), self.default_name("vae")}
        return [p.info(default=p.name in defaults) for p in self.predictors.values()]

    def failed_models(self) -> list[schemas.FailedModel]:
        return [schemas.FailedModel(name=n, error=e) for n, e in self.failed.items()]
