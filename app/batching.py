"""Dynamic batching: items submitted by concurrent requests run as one batched call.

One `Batcher` per (model, operation). Requests put their items in a bounded queue and await one
future per item; a worker task on the event loop takes up to `max_batch_size` items, runs the
batched function in an executor thread (so HTTP keeps flowing while the model computes), and
that thread hands the outputs back in one loop callback that sets each item's future with its
own output, so results go back in order and the waiting requests resume first.

When to wait for more items: a request arriving at an idle server runs at once (it waits for
nothing). Waiting `max_wait_s` to fill a batch only pays when others are likely to arrive, so
the worker waits only while under load: the last batch held several items, or items queued up
while it ran. Under steady load batches fill from the queue that builds during each forward.

Overload: the queue holds at most `max_queue` items; a submit that would overflow it raises
`Overloaded` (503 + Retry-After) and the admitted items still complete. Deadline: a submit
that outlives `timeout` raises `DeadlineExceeded` (504) and cancels its futures; cancelled
items still in the queue are dropped before a batch forms, so abandoned work never runs. A
request cancelled for any reason (client gone) cancels its futures the same way.

Lanes: batches run on the threads of a `Lanes`, shared by all batchers of an app. With one lane
(the default) batches take turns on one inference thread that uses every intra-op thread. With
N lanes up to N batches run at once, each on its own thread with its share of the intra-op
threads. A batch forms when a lane is free, from what is queued shared among the lanes (see
`lane_share`), so the requests of one process are spread over its lanes one by one (not
connection by connection, as among worker processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.lanes import Lanes, lane_share

In = TypeVar("In")
Out = TypeVar("Out")
# What an item's future answers: its output, and the start and end of the batch it ran in.
_Ran = tuple[Out, float, float]


class Overloaded(Exception):
    """The queue is full (or the batcher is stopping); retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Exception):
    """A request's items did not complete within its timeout."""


@dataclass
class Timed(Generic[Out]):
    """A request's outputs and where its time went: `queued` seconds from submit to the start
    of the first batch holding its items, `ran` from then to the end of the last one."""

    outputs: list[Out]
    queued: float
    ran: float


@dataclass
class BatchStats:
    """What one batched call did; passed to the observer."""

    size: int
    seconds: float
    error: BaseException | None


class Batcher(Generic[In, Out]):
    """Runs `fn(items) -> outputs` (same length, same order) on batches of queued items."""

    def __init__(
        self,
        fn: Callable[[list[In]], list[Out]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        lanes: Lanes | None = None,
        observer: Callable[[BatchStats], None] | None = None,
        on_queue: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_wait_s < 60:
            raise ValueError(f"max_wait_s must be in [0, 60), got {max_wait_s}")
        if max_queue < max_batch_size:
            raise ValueError(
                f"max_queue ({max_queue}) must be >= max_batch_size ({max_batch_size})"
            )
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        # Without shared lanes, a lane of its own (closed by stop()).
        self._own_lanes = lanes is None
        self._lanes = lanes if lanes is not None else Lanes()
        self._observer = observer
        self._on_queue = on_queue
        self._queue: deque[tuple[In, asyncio.Future[_Ran[Out]]]] = deque()
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._under_load = False
        self._batch_seconds = 0.01  # running mean, for Retry-After
        self._closed = False
        # Sizes of the batches running or whose outputs are not yet handed back, by id of the
        # batch: what the other lanes hold, for the share a freed lane takes.
        self._inflight: dict[int, int] = {}

    # --- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker task on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Refuse new items, let queued ones finish, then stop the worker."""
        self._closed = True
        while (
            (self._queue or self._inflight) and self._worker is not None and not self._worker.done()
        ):
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._own_lanes:
            self._lanes.executor.shutdown(wait=False)  # idle: nothing runs any more

    @property
    def queued(self) -> int:
        return len(self._queue)

    # --- submit ------------------------------------------------------------------------
    async def submit(self, items: Sequence[In], timeout: float | None = None) -> list[Out]:
        """Queue `items`, wait for all of them, return their outputs in order."""
        return (await self.submit_timed(items, timeout)).outputs

    async def submit_timed(self, items: Sequence[In], timeout: float | None = None) -> Timed[Out]:
        """`submit`, also telling how long the items queued and ran."""
        if not items:
            return Timed([], 0.0, 0.0)
        if self._closed:
            raise Overloaded("the service is shutting down", retry_after=1)
        if len(self._queue) + len(items) > self.max_queue:
            raise Overloaded(
                f"server overloaded: {len(self._queue)} items queued (limit {self.max_queue})",
                retry_after=self._retry_after(),
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[_Ran[Out]]] = [loop.create_future() for _ in items]
        submitted = time.perf_counter()
        self._queue.extend(zip(items, futures, strict=True))
        self._queue_changed()
        self._arrived.set()
        try:
            async with asyncio.timeout(timeout):
                if len(futures) == 1:  # the common case; gather would add a scheduling step
                    done = [await futures[0]]
                else:
                    done = list(await asyncio.gather(*futures))
            first = min(start for _, start, _ in done)
            last = max(end for _, _, end in done)
            return Timed([out for out, _, _ in done], first - submitted, last - first)
        except TimeoutError:
            raise DeadlineExceeded(f"inference did not finish within {timeout:g} s") from None
        finally:
            for f in futures:
                f.cancel()  # no-op on done futures
            if any(f.cancelled() for f in futures):
                # Abandoned (deadline, disconnect): free their queue slots now, so they neither
                # run nor count against max_queue.
                self._queue = deque(entry for entry in self._queue if not entry[1].done())
                self._queue_changed()

    def _retry_after(self) -> int:
        batches_ahead = math.ceil(len(self._queue) / self.max_batch_size / self._lanes.count)
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    def _queue_changed(self) -> None:
        if self._on_queue is not None:
            self._on_queue(len(self._queue))

    # --- worker ------------------------------------------------------------------------
    def _live(self) -> int:
        """Drop cancelled items from the head; count items still wanted."""
        while self._queue and self._queue[0][1].done():
            self._queue.popleft()
        return sum(1 for _, f in self._queue if not f.done())

    async def _fill(self) -> None:
        """Under load, wait up to max_wait_s for the batch to fill."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while self._live() < self.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._arrived.wait()

    def _take(self, limit: int) -> list[tuple[In, asyncio.Future[_Ran[Out]]]]:
        batch: list[tuple[In, asyncio.Future[_Ran[Out]]]] = []
        while self._queue and len(batch) < limit:
            item, fut = self._queue.popleft()
            if not fut.done():
                batch.append((item, fut))
        self._queue_changed()
        return batch

    def _work(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[tuple[In, asyncio.Future[_Ran[Out]]]],
        threads: int,
    ) -> None:
        """On a lane thread: run `fn` on one batch with `threads` intra-op threads, then hand
        the outputs back in one loop callback that sets every item's future, so the waiting
        requests resume at once (with no executor future in between)."""
        items = [item for item, _ in batch]
        start = time.perf_counter()
        outputs: list[Out] | None = None
        error: BaseException | None = None
        try:
            self._lanes.use(threads)
            outputs = self.fn(items)
            if len(outputs) != len(items):
                raise RuntimeError(f"batch of {len(items)} returned {len(outputs)} outputs")
        except BaseException as e:  # the batch fails, the worker and other batches go on
            error = e  # handed to its requests below, whatever it is: never lost here
        end = time.perf_counter()
        with contextlib.suppress(RuntimeError):  # the loop closed while the batch ran
            loop.call_soon_threadsafe(self._deliver, batch, outputs, error, start, end, threads)

    def _deliver(
        self,
        batch: list[tuple[In, asyncio.Future[_Ran[Out]]]],
        outputs: list[Out] | None,
        error: BaseException | None,
        start: float,
        end: float,
        threads: int,
    ) -> None:
        # Judged at the batch's end, before the requests it answers resume (and perhaps
        # submit again): did it hold several items, or did items queue up while it ran?
        self._under_load = len(batch) > 1 or self._live() > 0
        if outputs is not None:
            for (_, fut), out in zip(batch, outputs, strict=True):
                if not fut.done():
                    fut.set_result((out, start, end))
        else:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(error or RuntimeError("batch failed"))
        # Then free the lane: a worker waiting for it resumes after the requests.
        self._lanes.release(threads)
        self._inflight.pop(id(batch), None)
        seconds = end - start
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
        if self._observer is not None:
            self._observer(BatchStats(len(batch), seconds, error))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            threads = await self._lanes.acquire()  # while every lane is busy, the queue fills
            try:
                if self._under_load and self.max_wait_s > 0:
                    await self._fill()
                # What is queued is shared among the lanes, so that idle cores do not wait
                # for one lane's batch.
                batch = self._take(
                    lane_share(
                        self._live(),
                        self._lanes.idle,
                        self.max_batch_size,
                        list(self._inflight.values()),
                    )
                )
            except BaseException:
                self._lanes.release(threads)
                raise
            if not batch:
                self._lanes.release(threads)
                continue
            if not self._live():  # alone, if no other lane runs: as fast as it can
                threads = self._lanes.widen(threads)
            self._inflight[id(batch)] = len(batch)
            try:
                self._lanes.executor.submit(self._work, loop, batch, threads)
            except BaseException as e:  # the executor is shut down
                self._deliver(batch, None, e, 0.0, 0.0, threads)
