"""The micro-batcher's scheduling and admission, with a real asyncio loop and a plain process function.

Ordering and counts only: no timed asserts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from inference_service.batcher import MicroBatcher
from raee.errors import OverloadedError


class Recorder:
    """A process function that records each batch and takes ``seconds`` per batch."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.batches: list[list[str]] = []
        self.seconds = seconds

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds)
        return [f"done {item}" for item in items]


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_single_call_waits_about_one_micro_batch_behind_a_big_batch(in_flight: int) -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, str] = MicroBatcher(
        recorder, max_batch=16, max_wait_s=0.0, max_queue=2048, max_in_flight=in_flight
    )
    batcher.start()
    try:
        big = batcher.enqueue([f"big {i}" for i in range(1024)])
        await asyncio.sleep(0)  # the first micro-batch of the big call starts
        singles = [asyncio.ensure_future(batcher.submit(f"single {i}")) for i in range(3)]
        assert await asyncio.gather(*singles) == [f"done single {i}" for i in range(3)]
        assert len(await asyncio.gather(*big)) == 1024
    finally:
        await batcher.close()
    first_with_single = next(i for i, b in enumerate(recorder.batches) if any("single" in x for x in b))
    # Behind each batch in flight when they came (with two, the next one starts at once).
    assert first_with_single <= in_flight, "the single calls waited behind more micro-batches"
    # All three single calls shared that batch with the big call's items (round robin).
    assert sum("single" in x for x in recorder.batches[first_with_single]) == 3
    assert all(len(b) <= 16 for b in recorder.batches)


async def test_callers_are_served_round_robin() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, str] = MicroBatcher(recorder, max_batch=4, max_wait_s=0.0, max_queue=100)
    a = batcher.enqueue([f"a{i}" for i in range(8)])
    b = batcher.enqueue([f"b{i}" for i in range(8)])
    batcher.start()
    try:
        await asyncio.gather(*a, *b)
    finally:
        await batcher.close()
    assert recorder.batches[0] == ["a0", "b0", "a1", "b1"]


async def test_admission_sheds_what_would_miss_its_deadline_or_the_drain() -> None:
    recorder = Recorder(seconds=0.05)
    batcher: MicroBatcher[str, str] = MicroBatcher(
        recorder, max_batch=4, max_wait_s=0.0, max_queue=1000, drain_s=2.0
    )
    batcher.start()
    try:
        await batcher.submit("warm up")  # not measured: the first batch is warm-up
        assert batcher.item_s is None
        await batcher.submit("measured")  # about 50 ms an item
        assert batcher.item_s is not None
        queued = batcher.enqueue([f"q{i}" for i in range(20)])  # about 1 s of work
        with pytest.raises(OverloadedError, match="exceeds the call's deadline"):
            batcher.enqueue(["late"], deadline_s=batcher.item_s * 1.5)
        with pytest.raises(TimeoutError):  # alone it could not make it either: DEADLINE_EXCEEDED
            batcher.enqueue([f"x{i}" for i in range(10)], deadline_s=batcher.item_s * 2)
        with pytest.raises(OverloadedError, match="would not drain within the shutdown grace"):
            batcher.enqueue([f"d{i}" for i in range(100)])
        assert len(await asyncio.gather(*queued)) == 20
        assert await batcher.submit("now fine", deadline_s=5.0) == "done now fine"
        assert await batcher.drain(5.0)
        with pytest.raises(OverloadedError, match="shutting down"):
            batcher.enqueue(["after the drain began"])
    finally:
        await batcher.close()


async def test_cancelled_callers_are_skipped() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, str] = MicroBatcher(recorder, max_batch=4, max_wait_s=0.0, max_queue=100)
    gone = batcher.enqueue([f"gone {i}" for i in range(8)])
    for future in gone:
        future.cancel()
    kept = batcher.enqueue(["kept"])
    batcher.start()
    try:
        assert await kept[0] == "done kept"
    finally:
        await batcher.close()
    assert recorder.batches == [["kept"]]
    assert batcher.queued == 0


async def test_a_lone_request_does_not_wait_for_the_window() -> None:
    recorder = Recorder(seconds=0.0)
    # A 60 s window: waiting for it would time the calls out below.
    batcher: MicroBatcher[str, str] = MicroBatcher(recorder, max_batch=16, max_wait_s=60.0, max_queue=100)
    batcher.start()
    try:
        for i in range(3):
            assert await asyncio.wait_for(batcher.submit(f"lone {i}"), timeout=10.0) == f"done lone {i}"
    finally:
        await batcher.close()
    assert recorder.batches == [["lone 0"], ["lone 1"], ["lone 2"]]
    assert batcher.dispatched == {"expected": 3}


async def test_after_a_larger_batch_the_next_one_waits_for_company() -> None:
    gate = asyncio.Event()

    async def process(items: Sequence[str]) -> list[str]:
        await gate.wait()
        return [f"done {item}" for item in items]

    batcher: MicroBatcher[str, str] = MicroBatcher(process, max_batch=4, max_wait_s=60.0, max_queue=100)
    batcher.start()
    try:
        burst = [asyncio.ensure_future(batcher.submit(f"b{i}")) for i in range(3)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*burst), timeout=10.0)
        # The last batch had three items: one alone now waits for company (the 60 s window).
        gate.clear()
        late = [asyncio.ensure_future(batcher.submit("late 0"))]
        await asyncio.sleep(0.01)
        assert batcher.dispatched.total() == 1, "the lone item left without waiting"
        late += [asyncio.ensure_future(batcher.submit(f"late {i}")) for i in (1, 2)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*late), timeout=10.0)
    finally:
        await batcher.close()
    assert batcher.dispatched == {"expected": 2}


async def test_a_batch_waits_for_the_callers_of_the_running_one_to_come_back() -> None:
    process = Gate()
    # A 60 s window: a batch that waited for callers who never came would time the test out.
    batcher: MicroBatcher[str, str] = MicroBatcher(process, max_batch=8, max_wait_s=60.0, max_queue=100)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit("first"))
        await _until(lambda: len(process.started) == 1)  # "first" runs alone
        burst = [asyncio.ensure_future(batcher.submit(f"b{i}")) for i in range(3)]  # four open at once
        await _until(lambda: batcher.queued == 3)
        process.open.set()
        assert await asyncio.wait_for(first, timeout=10.0) == "done first"
        # Its caller sends the next request at once, and the three queued requests waited for it.
        again = await asyncio.wait_for(batcher.submit("first again"), timeout=10.0)
        assert again == "done first again"
        await asyncio.wait_for(asyncio.gather(*burst), timeout=10.0)
    finally:
        await batcher.close()
    assert process.started == [["first"], ["b0", "b1", "b2", "first again"]]
    assert batcher.dispatched == {"expected": 2}


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_callers_that_come_back_at_once_merge_into_whole_batches(in_flight: int) -> None:
    recorder = Recorder(seconds=0.005)
    batcher: MicroBatcher[str, str] = MicroBatcher(
        recorder, max_batch=8, max_wait_s=0.5, max_queue=100, max_in_flight=in_flight
    )

    async def caller(name: str, calls: int) -> None:
        for i in range(calls):
            assert await batcher.submit(f"{name} {i}") == f"done {name} {i}"
            await asyncio.sleep(0.001)  # the answer's way back and the next request's way in

    batcher.start()
    try:
        # Two cohorts of four: the second starts while the first one's batch runs.
        first = [asyncio.ensure_future(caller(f"a{c}", 8)) for c in range(4)]
        await _eventually(lambda: len(recorder.batches) >= 1)
        second = [asyncio.ensure_future(caller(f"b{c}", 8)) for c in range(4)]
        await asyncio.wait_for(asyncio.gather(*first, *second), timeout=30.0)
    finally:
        await batcher.close()
    sizes = [len(batch) for batch in recorder.batches]
    assert sum(sizes) == 64
    # Taking turns, the cohorts would make about sixteen batches of four.
    assert sizes.count(8) >= 6, sizes


async def test_when_callers_do_not_come_back_the_batcher_stops_waiting_for_them() -> None:
    process = Gate()
    batcher: MicroBatcher[str, str] = MicroBatcher(process, max_batch=4, max_wait_s=0.05, max_queue=100)
    batcher.start()

    async def burst_behind(alone: str, burst: list[str]) -> None:
        """``alone`` runs by itself while ``burst`` queues behind it; nobody sends a next request."""
        process.open.clear()
        first = asyncio.ensure_future(batcher.submit(alone))
        await _eventually(lambda: process.started[-1:] == [[alone]])
        rest = [asyncio.ensure_future(batcher.submit(item)) for item in burst]
        await _eventually(lambda: batcher.queued == len(burst))
        process.open.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10.0)

    try:
        # Four were open at once, so the burst waits the window for the lone caller, in vain.
        await burst_behind("one alone", ["one 0", "one 1", "one 2"])
        assert batcher.dispatched == {"expected": 1, "window": 1}
        process.open.clear()
        alone = asyncio.ensure_future(batcher.submit("two alone"))  # waits the window: the last batch had 3
        await _eventually(lambda: process.started[-1:] == [["two alone"]])
        batcher.max_wait_s = 60.0  # from now on, a wait for open requests would time the test out
        rest = [asyncio.ensure_future(batcher.submit(f"two {i}")) for i in range(3)]
        await _eventually(lambda: batcher.queued == 3)
        process.open.set()
        await asyncio.wait_for(asyncio.gather(alone, *rest), timeout=10.0)
    finally:
        await batcher.close()
    assert batcher.dispatched == {"expected": 2, "window": 2}
    assert process.started[-1] == ["two 0", "two 1", "two 2"]


async def _eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.001)


class Gate:
    """A process function whose batches wait on a gate: the retrieval call of a RAEE batch."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started: list[list[str]] = []
        self.finished: list[list[str]] = []

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.started.append(list(items))
        await self.open.wait()
        self.finished.append(list(items))
        return [f"done {item}" for item in items]


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


@pytest.mark.parametrize("in_flight", [1, 2])
async def test_a_batch_that_waits_first_starts_beside_a_running_one(in_flight: int) -> None:
    gate = Gate()
    batcher: MicroBatcher[str, str] = MicroBatcher(
        gate, max_batch=2, max_wait_s=0.0, max_queue=100, max_in_flight=in_flight
    )
    batcher.start()
    try:
        first = batcher.enqueue(["a0", "a1"])
        await _until(lambda: len(gate.started) == 1)
        second = batcher.enqueue(["b0", "b1"])
        for _ in range(50):
            await asyncio.sleep(0)
        # With room for two, the second batch is running while the first still waits.
        assert gate.started == [["a0", "a1"], ["b0", "b1"]][:in_flight]
        gate.open.set()
        assert await asyncio.gather(*first, *second) == ["done a0", "done a1", "done b0", "done b1"]
    finally:
        await batcher.close()
    assert gate.started == [["a0", "a1"], ["b0", "b1"]]


async def test_only_a_queued_item_that_waits_first_starts_a_batch_beside_a_running_one() -> None:
    gate = Gate()
    batcher: MicroBatcher[str, str] = MicroBatcher(
        gate,
        max_batch=4,
        max_wait_s=0.0,
        max_queue=100,
        max_in_flight=2,
        waits_first=lambda item: item.startswith("raee"),
    )
    batcher.start()
    try:
        futures = batcher.enqueue(["raee a", "raee b"])
        await _until(lambda: len(gate.started) == 1)
        futures += batcher.enqueue(["full 0"])
        futures += batcher.enqueue(["full 1", "full 2"])
        for _ in range(50):
            await asyncio.sleep(0)
        # They could only queue behind the running batch: they stay in the queue.
        assert len(gate.started) == 1, "a batch with nothing to overlap started beside the running one"
        futures += batcher.enqueue(["raee c"])
        await _until(lambda: len(gate.started) == 2)  # while the first batch still runs
        assert gate.finished == []
        assert gate.started[1] == ["full 0", "full 1", "raee c", "full 2"]  # round robin
        gate.open.set()
        assert len(await asyncio.gather(*futures)) == 6
    finally:
        await batcher.close()


async def test_close_fails_the_batches_in_flight_and_the_queue() -> None:
    gate = Gate()  # never opens
    batcher: MicroBatcher[str, str] = MicroBatcher(
        gate,
        max_batch=1,
        max_wait_s=0.0,
        max_queue=100,
        max_in_flight=2,
        waits_first=lambda item: item != "full",
    )
    batcher.start()
    futures = batcher.enqueue(["a"]) + batcher.enqueue(["b"]) + batcher.enqueue(["full"])
    await _until(lambda: len(gate.started) == 2)
    await batcher.close()
    for future in futures:  # two were running, one was queued: every caller hears back
        with pytest.raises(OverloadedError, match="shutting down"):
            await future


async def test_drain_waits_for_the_running_batch() -> None:
    gate = Gate()
    batcher: MicroBatcher[str, str] = MicroBatcher(gate, max_batch=4, max_wait_s=0.0, max_queue=100)
    batcher.start()
    try:
        (future,) = batcher.enqueue(["a"])
        await _until(lambda: len(gate.started) == 1)
        assert not await batcher.drain(0.1)  # the queue is empty, but "a" is not answered
        gate.open.set()
        assert await batcher.drain(5.0)
        assert future.result() == "done a"
    finally:
        await batcher.close()


async def test_a_process_that_answers_too_few_items_fails_the_batch() -> None:
    async def short(items: Sequence[str]) -> list[str]:
        return ["only one"]

    batcher: MicroBatcher[str, str] = MicroBatcher(short, max_batch=4, max_wait_s=0.0, max_queue=100)
    futures = batcher.enqueue(["a", "b"])
    batcher.start()
    try:
        for future in futures:
            with pytest.raises(RuntimeError, match="answered 1 items of a batch of 2"):
                await future
        assert await batcher.submit("c") == "only one"  # it keeps serving
    finally:
        await batcher.close()
