"""Per-request phase timings, sent in the `Server-Timing` header.

    Server-Timing: app;dur=31.90, decode;dur=1.10, queue;dur=0.21, infer;dur=29.62

`app` is the whole time in the app up to the answer's first byte; the others are the phases a
model request went through: `decode` (decoding the uploaded images or JSON pixels),
`queue` (waiting in the batcher until its batch starts on the inference thread, the hand-off
included), `infer` (the batched forward its items ran in, the whole batch's time) and, for PNG
answers, `png` (encoding them). What `app` holds beyond them is the serving itself: routing,
parsing, the hand-back from the inference thread, building the answer. Browsers' developer tools show the header; a client can log it to
tell the model's share of a latency from the server's.

The middleware opens one list per request in a context variable, so code anywhere on the
request's task records into it without passing it along.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

_phases: ContextVar[list[tuple[str, float]] | None] = ContextVar("phases", default=None)


def open_request() -> tuple[list[tuple[str, float]], Token[list[tuple[str, float]] | None]]:
    """Start collecting for the current request: (its list, the token to close it with)."""
    phases: list[tuple[str, float]] = []
    return phases, _phases.set(phases)


def close_request(token: Token[list[tuple[str, float]] | None]) -> None:
    _phases.reset(token)


def record(name: str, seconds: float) -> None:
    """Add phase `name` to the current request's timings (outside a request: ignored)."""
    phases = _phases.get()
    if phases is not None:
        phases.append((name, seconds))


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Record the time the `with` block takes as phase `name` (when it completes)."""
    start = time.perf_counter()
    yield
    record(name, time.perf_counter() - start)


def header(app_seconds: float, phases: list[tuple[str, float]]) -> bytes:
    """The Server-Timing value: `app` first, then the phases in the order they ran."""
    entries = [("app", app_seconds), *phases]
    return ", ".join(f"{name};dur={s * 1000:.2f}" for name, s in entries).encode()
