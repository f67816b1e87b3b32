"""Inference lanes: the threads batches run on, and how the intra-op threads are shared.

`Lanes` runs up to `count` batches at once (one thread each) within `threads` intra-op
threads; `lane_share` decides how many queued items a lane that frees takes. `app.batching`
forms the batches; every batcher of an app shares one `Lanes`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor


def lane_share(queued: int, free: int, max_batch_size: int, running: Sequence[int] = ()) -> int:
    """How many of `queued` items a lane that is free now takes.

    `free` lanes (the caller's included) can start a batch now; `running` holds the sizes of
    the batches of the same batcher running on other lanes. Under a full load (a whole batch
    queued for every free lane) a lane takes a whole batch: the largest batches are the
    cheapest per item. Otherwise it takes an even share of the items in the system, queued and
    running: (queued + running) / (free lanes + running batches), rounded up, at most what is
    queued. So two lanes serving 16 clients run batches of 8 and 8: when one frees, the 8 it
    answered come back and it takes them, leaving nothing for the other lane, whose own 8 come
    back when it frees. An uneven split (12 beside 4) evens out in one round.

    Why: with clients that send again as soon as they are answered, a rule that looked only at
    the queue either let one lane's batches stay large and the other's small (take all: 12
    beside 4 at 16 clients on the 224x224 AlexNet, two lanes), or, handing part of the queue to
    a lane about to free, cut batches to 5-7 items; on a CPU a batch has a large fixed cost
    (the fully connected layers stream their weights from memory once per batch), so smaller
    batches lose throughput (57.8 img/s at 2 ms batch timeout, against 67.9 for two worker
    processes whose 8 clients each keep batches of 8).
    """
    if queued >= free * max_batch_size:
        return max_batch_size
    share = -(-(queued + sum(running)) // (free + len(running)))
    return min(queued, share, max_batch_size)


class Lanes:
    """The inference threads batches run on, and the intra-op threads those share.

    Up to `count` batches (of any batcher holding this object) run at once, each on its own
    thread. A batch that starts with no other batch running and nothing queued behind it gets
    all `threads` intra-op threads: a lone request runs as fast as the cores allow. Otherwise a
    batch gets `threads // count`, so batches running side by side never hold more intra-op
    threads than `threads` (no oversubscription); a batch that needs threads a running batch
    holds waits for it. `set_threads(n)` (torch.set_num_threads) is called on the batch's own
    thread whenever its count changes: the OpenMP team size is per thread.

    Why more than one lane: on a CPU a compute-bound model runs more images per second as
    single-threaded batches side by side than as one batch on every core (benchmarks.inprocess
    measures both; docs/performance.md), while one batch on every core has the lower latency.
    So a lone request gets every core and a loaded server runs batches side by side.
    """

    def __init__(
        self,
        count: int = 1,
        threads: int = 1,
        *,
        set_threads: Callable[[int], None] | None = None,
        name: str = "inference",
    ) -> None:
        if count < 1 or threads < 1:
            raise ValueError(f"lanes need count >= 1 and threads >= 1, got {count}, {threads}")
        if count > threads:
            raise ValueError(f"{count} lanes need at least {count} intra-op threads, got {threads}")
        self.count = count
        self.threads = threads
        self.per_lane = threads // count
        self._set_threads = set_threads
        self._free = threads  # intra-op threads no running batch holds
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._local = threading.local()
        self.executor = ThreadPoolExecutor(
            max_workers=count, thread_name_prefix=name, initializer=self._init_thread
        )

    def _init_thread(self) -> None:
        """Each lane thread starts at the full count (it runs load and warm-up alone)."""
        self.use(self.threads)

    def use(self, threads: int) -> None:
        """On a lane thread: run the next batch with `threads` intra-op threads."""
        if self._set_threads is not None and getattr(self._local, "threads", None) != threads:
            self._set_threads(threads)
            self._local.threads = threads

    @property
    def idle(self) -> int:
        """Lanes that could start a batch now, counting the caller's (whose threads it holds)."""
        return 1 + self._free // self.per_lane

    @property
    def running(self) -> bool:
        """Some batch holds intra-op threads."""
        return self._free < self.threads

    async def acquire(self) -> int:
        """On the loop: wait (first come, first served) for a lane's share of the threads;
        return how many are held."""
        if self._free >= self.per_lane and not self._waiters:
            self._free -= self.per_lane
            return self.per_lane
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # release() reserved the threads before waking us
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(self.per_lane)
            else:
                self._waiters.remove(waiter)
            raise
        return self.per_lane

    def widen(self, held: int) -> int:
        """A batch about to run alone, nothing queued behind it: take every free thread."""
        if held + self._free == self.threads:
            self._free = 0
            return self.threads
        return held

    def release(self, held: int) -> None:
        """On the loop: a batch ended; wake those waiting for threads."""
        self._free += held
        while self._waiters and self._free >= self.per_lane:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._free -= self.per_lane
                waiter.set_result(None)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
