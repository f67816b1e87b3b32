"""routes.uploads.infer: the answer when the client stays, 499 and cancelled work when it
leaves, and an outside cancellation (shutdown) passed on untouched."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import HTTPException

from app.metrics import Metrics
from app.routes.uploads import CLIENT_GONE, infer


class SlowRegistry:
    """Answers `items` doubled after `delay` seconds; records a cancelled call."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.cancelled = asyncio.Event()

    async def infer(self, predictor: Any, op: str, items: list[int]) -> list[int]:
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return [2 * i for i in items]


def fake_request(disconnect_after: float | None) -> Any:
    """A request whose client disconnects after `disconnect_after` s (None: never)."""

    async def receive() -> dict[str, Any]:
        if disconnect_after is None:
            await asyncio.Event().wait()  # never set
        else:
            await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    app = SimpleNamespace(state=SimpleNamespace(metrics=Metrics()))
    return SimpleNamespace(receive=receive, app=app)


def disconnected(request: Any) -> float:
    return request.app.state.metrics.rejected.labels("disconnected")._value.get()


def other_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_answer_comes_back_and_the_watcher_is_gone() -> None:
    request = fake_request(None)
    assert await infer(request, SlowRegistry(0.01), None, "classify", [1, 2]) == [2, 4]  # type: ignore[arg-type]
    await asyncio.sleep(0)  # let the cancelled watcher finish
    assert not other_tasks()
    assert disconnected(request) == 0


async def test_client_leaving_cancels_the_work_and_answers_499() -> None:
    request, registry = fake_request(0.01), SlowRegistry(10)
    with pytest.raises(HTTPException) as e:
        await infer(request, registry, None, "classify", [1])  # type: ignore[arg-type]
    assert e.value.status_code == CLIENT_GONE
    assert registry.cancelled.is_set()
    assert disconnected(request) == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # the request's task can go on


async def test_outside_cancellation_is_not_taken_for_a_disconnect() -> None:
    request, registry = fake_request(None), SlowRegistry(10)
    call = asyncio.ensure_future(infer(request, registry, None, "classify", [1]))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert registry.cancelled.is_set()
    assert disconnected(request) == 0
