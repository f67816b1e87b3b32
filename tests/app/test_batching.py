"""The dynamic batcher: order, batching under load, no wait when idle, overload, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest

from app.batching import Batcher, BatchStats, DeadlineExceeded, Overloaded
from app.lanes import Lanes, lane_share


def recording(delay: float = 0.0, fail_on: int | None = None):
    """A batched function doubling its inputs, recording each batch it saw."""
    batches: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        batches.append(list(items))
        if delay:
            time.sleep(delay)
        if fail_on is not None and fail_on in items:
            raise RuntimeError("boom")
        return [2 * x for x in items]

    return fn, batches


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0, "max_wait_s": 0.0, "max_queue": 4}, "max_batch_size"),
        ({"max_batch_size": 2, "max_wait_s": -1.0, "max_queue": 4}, "max_wait_s"),
        ({"max_batch_size": 8, "max_wait_s": 0.0, "max_queue": 4}, "max_queue"),
    ],
)
def test_invalid_configuration_fails_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Batcher(lambda xs: xs, **kwargs)


async def test_concurrent_requests_batch_together_and_get_their_own_results() -> None:
    fn, batches = recording(delay=0.02)
    b = Batcher(fn, max_batch_size=16, max_wait_s=0.01, max_queue=64)
    b.start()
    results = await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(10)))
    await b.stop()
    assert results == [[2 * i, 2 * (100 + i)] for i in range(10)]
    assert max(len(x) for x in batches) > 2  # requests really shared batches
    assert all(len(x) <= 16 for x in batches)
    assert sorted(x for batch in batches for x in batch) == sorted(
        [i for i in range(10)] + [100 + i for i in range(10)]
    )


async def test_single_request_under_no_load_does_not_wait() -> None:
    fn, _ = recording()
    b = Batcher(fn, max_batch_size=8, max_wait_s=5.0, max_queue=8)  # a wait would be obvious
    b.start()
    start = time.perf_counter()
    assert await b.submit([3]) == [6]
    assert time.perf_counter() - start < 1.0
    await b.stop()


async def test_back_to_back_requests_of_one_client_do_not_wait() -> None:
    """A client that sends its next request as soon as the answer arrives (concurrency 1) is
    not load: the next item is queued before the worker has finished with the last batch,
    which must not count as items that queued up while it ran."""
    fn, batches = recording()
    b = Batcher(fn, max_batch_size=8, max_wait_s=5.0, max_queue=8)  # a wait would be obvious
    b.start()
    start = time.perf_counter()
    for i in range(5):
        assert await b.submit([i]) == [2 * i]
    assert time.perf_counter() - start < 1.0
    assert batches == [[i] for i in range(5)]
    await b.stop()


async def test_full_queue_is_refused_and_admitted_items_complete() -> None:
    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    b = Batcher(fn, max_batch_size=2, max_wait_s=0.0, max_queue=4)
    b.start()
    admitted = [asyncio.create_task(b.submit([i])) for i in range(2)]
    await asyncio.sleep(0.05)  # first item is in the forward pass, blocking
    admitted += [asyncio.create_task(b.submit([10, 11]))]
    admitted += [asyncio.create_task(b.submit([12]))]
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as info:
        await b.submit([20, 21])
    assert info.value.retry_after >= 1
    release.set()
    assert [await t for t in admitted] == [[0], [1], [10, 11], [12]]
    await b.stop()


async def test_deadline_raises_and_drops_queued_work() -> None:
    release = threading.Event()
    seen: list[int] = []

    def fn(items: list[int]) -> list[int]:
        seen.extend(items)
        release.wait(5)
        return items

    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8)
    b.start()
    first = asyncio.create_task(b.submit([1]))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await b.submit([2], timeout=0.05)  # queued behind the blocked batch
    release.set()
    assert await first == [1]
    await asyncio.sleep(0.05)
    assert seen == [1]  # item 2 was never computed
    await b.stop()


async def test_error_fails_only_its_batch() -> None:
    fn, _ = recording(fail_on=13)
    stats: list[BatchStats] = []
    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8, observer=stats.append)
    b.start()
    with pytest.raises(RuntimeError, match="boom"):
        await b.submit([13])
    assert await b.submit([4]) == [8]  # the worker survives
    await b.stop()
    assert [s.error is not None for s in stats] == [True, False]


async def test_a_base_exception_in_fn_reaches_its_request_and_the_worker_goes_on() -> None:
    class Fatal(BaseException):
        pass

    def fn(items: list[int]) -> list[int]:
        if 13 in items:
            raise Fatal("not an Exception")
        return items

    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8)
    b.start()
    with pytest.raises(Fatal):
        await asyncio.wait_for(b.submit([13]), 5)  # not left waiting forever
    assert await b.submit([4]) == [4]
    await b.stop()


async def test_cancelled_request_is_dropped_before_it_runs() -> None:
    release = threading.Event()
    seen: list[int] = []

    def fn(items: list[int]) -> list[int]:
        seen.extend(items)
        release.wait(5)
        return items

    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8)
    b.start()
    first = asyncio.create_task(b.submit([1]))
    await asyncio.sleep(0.02)
    gone = asyncio.create_task(b.submit([2]))  # like a client that disconnects
    await asyncio.sleep(0.01)
    gone.cancel()
    release.set()
    assert await first == [1]
    await asyncio.sleep(0.05)
    assert seen == [1]
    assert b.queued == 0
    await b.stop()


async def test_stop_lets_the_running_batch_finish_and_counts_it() -> None:
    release = threading.Event()

    def fn(items: list[int]) -> list[int]:
        release.wait(5)
        return items

    stats: list[BatchStats] = []
    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8, observer=stats.append)
    b.start()
    running = asyncio.create_task(b.submit([7]))
    await asyncio.sleep(0.02)  # out of the queue, inside fn
    stopping = asyncio.create_task(b.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done()
    release.set()
    assert await running == [7]
    await stopping
    assert [s.size for s in stats] == [1]


async def test_stopped_batcher_refuses_new_work() -> None:
    b: Batcher[int, int] = Batcher(lambda xs: xs, max_batch_size=1, max_wait_s=0.0, max_queue=1)
    b.start()
    await b.stop()
    with pytest.raises(Overloaded, match="shutting down"):
        await b.submit([1])


async def test_timed_submit_tells_queueing_from_running() -> None:
    fn, _ = recording(delay=0.05)
    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8)
    b.start()
    first = asyncio.create_task(b.submit_timed([1]))
    await asyncio.sleep(0.01)
    second = await b.submit_timed([2])  # waits for the first batch, then runs its own
    alone = await first
    await b.stop()
    assert alone.outputs == [2] and second.outputs == [4]
    assert alone.queued < 0.02 and alone.ran >= 0.04  # an idle batcher starts at once
    assert second.queued >= 0.03  # the rest of the first batch
    assert second.ran >= 0.04


# --- lanes ---------------------------------------------------------------------------------
def threads_seen() -> tuple[Lanes, Callable[[], int]]:
    """Lanes(2 lanes, 2 threads) whose set_threads is recorded per OS thread."""
    local = threading.local()

    def set_threads(n: int) -> None:
        local.threads = n

    return Lanes(2, 2, set_threads=set_threads), lambda: local.threads


async def test_two_lanes_run_two_batches_at_once() -> None:
    lanes, _ = threads_seen()
    meet = threading.Barrier(2, timeout=5)  # on one lane the first batch would wait in vain

    def fn(items: list[int]) -> list[int]:
        meet.wait()
        return items

    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8, lanes=lanes)
    b.start()
    assert await asyncio.gather(b.submit([1]), b.submit([2])) == [[1], [2]]
    await b.stop()
    lanes.shutdown()


async def test_a_lone_batch_gets_every_thread_and_side_by_side_batches_share_them() -> None:
    lanes, current = threads_seen()
    held: list[int] = []
    lock = threading.Lock()
    running = [0]  # intra-op threads held by batches running now
    most = [0]

    def fn(items: list[int]) -> list[int]:
        with lock:
            running[0] += current()
            most[0] = max(most[0], running[0])
            held.append(current())
        time.sleep(0.02)
        with lock:
            running[0] -= current()
        return items

    b = Batcher(fn, max_batch_size=2, max_wait_s=0.0, max_queue=64, lanes=lanes)
    b.start()
    assert await b.submit([0]) == [0]
    assert held == [2]  # alone, nothing queued: both threads
    held.clear()
    await asyncio.gather(*(b.submit([i]) for i in range(12)))
    await b.stop()
    lanes.shutdown()
    assert 1 in held  # under load, batches ran on one thread each...
    assert most[0] == 2  # ...side by side, never holding more threads than there are


async def test_a_queue_is_shared_among_the_free_lanes() -> None:
    lanes, _ = threads_seen()
    fn, batches = recording(delay=0.02)
    b = Batcher(fn, max_batch_size=8, max_wait_s=0.0, max_queue=64, lanes=lanes)
    b.start()
    assert await b.submit(list(range(8))) == [2 * x for x in range(8)]
    await b.stop()
    lanes.shutdown()
    assert sorted(len(x) for x in batches) == [4, 4]  # not 8 on one lane, the other idle


def test_a_free_lane_takes_an_even_share_of_the_items_in_the_system() -> None:
    # 16 clients, two lanes: one frees while the other runs 8; the 8 it answered are back in
    # the queue and it takes all of them (the other lane's 8 come back when it frees).
    assert lane_share(8, free=1, max_batch_size=32, running=[8]) == 8
    # An uneven round (12 queued beside a running 4) evens out: 8 now, 4 left for the other.
    assert lane_share(12, free=1, max_batch_size=32, running=[4]) == 8
    # Beside a small running batch the queue is shared: 5 of 8, the other lane gets 3 more.
    assert lane_share(8, free=1, max_batch_size=32, running=[2]) == 5
    # No batch of this batcher running: the queue split among the free lanes.
    assert lane_share(12, free=1, max_batch_size=32) == 12
    assert lane_share(12, free=2, max_batch_size=32) == 6
    assert lane_share(7, free=2, max_batch_size=32) == 4
    # A lone request runs at once, whatever else runs.
    assert lane_share(1, free=1, max_batch_size=32, running=[30]) == 1


def test_under_full_load_a_lane_takes_a_whole_batch() -> None:
    # A whole batch queued for every free lane: the largest batch (cheapest per item).
    assert lane_share(40, free=1, max_batch_size=32, running=[2]) == 32
    assert lane_share(64, free=2, max_batch_size=32) == 32
    assert lane_share(31, free=1, max_batch_size=32, running=[32]) == 31  # one short: all
    assert lane_share(31, free=2, max_batch_size=32) == 16


def test_a_lane_share_never_exceeds_the_batch_or_the_queue() -> None:
    for queued in range(0, 70):
        for free in (1, 2, 3):
            for running in ([], [1], [4], [8, 3]):
                k = lane_share(queued, free, 8, running)
                assert 0 <= k <= min(queued, 8)
                assert k >= 1 or queued == 0
                # at least an even share of the queue among the free and the running lanes
                assert k >= min(8, -(-queued // (free + len(running))))
                if not running:  # nothing else will come for them: the free lanes take it all
                    assert free * k >= min(queued, free * 8)


async def test_batchers_sharing_one_lane_take_turns() -> None:
    lanes = Lanes(1, 1)
    lock = threading.Lock()
    running = [0]
    overlap = [False]

    def fn(items: list[int]) -> list[int]:
        with lock:
            running[0] += 1
            overlap[0] |= running[0] > 1
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return items

    a = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8, lanes=lanes)
    b = Batcher(fn, max_batch_size=1, max_wait_s=0.0, max_queue=8, lanes=lanes)
    a.start()
    b.start()
    results = await asyncio.gather(*(x.submit([i]) for i in range(4) for x in (a, b)))
    await asyncio.gather(a.stop(), b.stop())
    lanes.shutdown()
    assert results == [[i] for i in range(4) for _ in (a, b)]
    assert not overlap[0]


async def test_a_cancelled_wait_for_a_lane_gives_nothing_away() -> None:
    lanes = Lanes(1, 2)
    held = await lanes.acquire()
    for handed_over in (False, True):
        waiting = asyncio.ensure_future(lanes.acquire())
        await asyncio.sleep(0)  # now waiting for the threads
        if handed_over:  # released to the waiter, which is cancelled before it resumes
            lanes.release(held)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        if handed_over:
            held = await asyncio.wait_for(lanes.acquire(), 1)  # the threads came back
    assert held == 2
    lanes.release(held)
    assert lanes.running is False
    lanes.shutdown()


def test_more_lanes_than_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="3 lanes"):
        Lanes(3, 2)
