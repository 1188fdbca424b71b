"""The micro-batcher's scheduling and admission, with a real asyncio loop and a plain process function.

Ordering and counts only: no timed asserts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

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


async def test_a_single_call_waits_about_one_micro_batch_behind_a_big_batch() -> None:
    recorder = Recorder()
    batcher: MicroBatcher[str, str] = MicroBatcher(recorder, max_batch=16, max_wait_s=0.0, max_queue=2048)
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
    assert first_with_single <= 1, "the single calls waited behind more than one micro-batch"
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
        first = asyncio.ensure_future(batcher.submit("first"))
        await asyncio.sleep(0.01)  # "first" runs alone; the next three queue behind it
        burst = [asyncio.ensure_future(batcher.submit(f"b{i}")) for i in range(3)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(first, *burst), timeout=10.0)
        # The last batch had three items: one alone now waits for company (the 60 s window).
        gate.clear()
        late = [asyncio.ensure_future(batcher.submit("late 0"))]
        await asyncio.sleep(0.01)
        assert batcher.dispatched.total() == 2, "the lone item left without waiting"
        late += [asyncio.ensure_future(batcher.submit(f"late {i}")) for i in (1, 2)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*late), timeout=10.0)
    finally:
        await batcher.close()
    assert batcher.dispatched == {"expected": 3}
