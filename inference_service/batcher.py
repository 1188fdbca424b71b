"""Micro-batching with fair scheduling and admission control.

Concurrent requests are gathered into micro-batches of at most ``max_batch``
items. Requests arriving meanwhile queue up and form the next batch, so under
load batches fill without waiting.

**Batches in flight.** Up to ``max_in_flight`` batches are processed at once. A
RAEE batch first waits on the retrieval service; with two in flight, the next
batch's retrieval call runs while this one's forward pass does (the worker runs
one forward pass at a time). A batch starts beside a running one only while an
item that ``waits_first`` is queued: any other batch could only queue behind the
running one, so its items stay in the queue, where later callers still join them.

**No wait for a lone request.** A batch waits up to ``max_wait`` for more items
only while it is smaller than the company seen lately: the previous batch, or
the most requests open at once (queued or being processed) since that batch
started. Concurrent callers showed up then, so more are likely on their way.
After a batch of one (and at start) a lone request is dispatched at once: with
nobody else around, the window would only add its length to every call.
:attr:`MicroBatcher.dispatched` counts why each batch left (``full``,
``expected``: as large as that company, ``window``: the wait ran out).

**Whole cohorts.** Callers that send their next request as soon as they have an
answer (a client with a fixed number of workers) would otherwise settle into
cohorts: 16 of them into two batches of 8 that take turns, because each batch
leaves once it is as large as the previous one. Counting the requests open at
once sees all 16, so a batch of 8 waits (up to ``max_wait``) for the other
cohort's callers to come back with their next requests, and the two merge into
one batch of 16, which costs less per item than two of 8
(``benchmarks/cohorts.py``). Where callers do not come back (each request a new
client), that wait only runs out: after a wait for open requests that added no
item, the batcher goes by the previous batch alone for the next
``COHORT_COOLDOWN`` batches.

**Fairness.** Each call is a *caller* with its own queue (a ClassifyBatch call is
one caller with many items). A batch takes one item from each waiting caller in
turn (round robin), so a single Classify waits about one micro-batch behind a
1024-item ClassifyBatch, not behind all of it.

**Admission.** Each batch's time is measured; from it the batcher estimates how
long a new call would wait. A call is refused at once with
:class:`OverloadedError` (RESOURCE_EXHAUSTED) when

* the queue is full (``max_queue`` items),
* its estimated wait exceeds the caller's remaining deadline (it would miss it
  anyway: shedding it early costs nothing), or
* the work already queued plus its own could not be drained within
  ``drain_s`` (the shutdown grace period), so that SIGTERM drops nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from raee.errors import OverloadedError
from raee.serving.metrics import SHED

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Weight of the newest measurement in the moving averages of batch times.
EWMA_WEIGHT = 0.2
# Batches that go by the previous batch's size alone after a wait for open requests added nothing.
COHORT_COOLDOWN = 8


@dataclass
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[ResultT]
    waits_first: bool


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        process: Callable[[Sequence[ItemT]], Awaitable[Sequence[ResultT | BaseException]]],
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        drain_s: float = 0.0,
        max_in_flight: int = 1,
        waits_first: Callable[[ItemT], bool] | None = None,
        merge_cohorts: bool = True,
    ) -> None:
        """``waits_first(item)``: whether processing the item starts with a wait elsewhere
        (RAEE's retrieval call), which another batch's work can fill; None: every item.
        ``merge_cohorts``: wait for the requests open at once, not only the previous
        batch's size (module doc, "Whole cohorts")."""
        if max_batch < 1 or max_queue < 1 or max_in_flight < 1 or max_wait_s < 0 or drain_s < 0:
            raise ValueError(
                "max_batch, max_queue and max_in_flight must be >= 1, max_wait_s and drain_s >= 0"
            )
        self._process = process
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._waits_first = waits_first or (lambda _item: True)
        self.max_wait_s = max_wait_s
        self.merge_cohorts = merge_cohorts
        self.max_queue = max_queue
        self.drain_s = drain_s  # 0: no drain bound
        self._callers: dict[int, deque[_Pending[ItemT, ResultT]]] = {}
        self._ids = itertools.count()
        self._queued = 0
        self._queued_waiting_first = 0
        self._arrived = asyncio.Event()  # an item was queued
        self._changed = asyncio.Event()  # an item was queued or a batch finished
        self._forming: list[_Pending[ItemT, ResultT]] = []  # taken from the queue, not yet started
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._running_items = 0  # items of the running batches, until they are answered
        # The most items open at once (queued, forming or running) since the last batch started.
        self._peak_open = 0
        self._cohort_cooldown = 0
        self._last_done = 0.0  # when the last batch finished (perf_counter)
        self._seen_large = False
        # Measured: seconds per item, and the time of one batch (None until the first batch).
        self.item_s: float | None = None
        self.batch_s: float | None = None
        self.batches = 0
        self._last_size = 1
        self.dispatched: Counter[str] = Counter()

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new calls, then wait up to ``timeout_s`` for every admitted item to be
        answered; True if they were."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._busy() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return not self._busy()

    def _busy(self) -> bool:
        return bool(self._queued or self._forming or self._in_flight)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for running in list(self._in_flight):
            running.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        _fail(self._forming, OverloadedError("the server is shutting down"))
        for queue in self._callers.values():
            _fail(queue, OverloadedError("the server is shutting down"))
        self._callers.clear()
        self._queued = self._queued_waiting_first = 0

    # -- admission ----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    def estimated_wait_s(self, items: int) -> float | None:
        """How long a new caller with ``items`` items would wait for its last answer (None: unmeasured).

        Round robin serves one item of every waiting caller per round, so the new
        caller's last item is done after its own items plus up to as many of each
        other caller's, plus the batch that is running now.
        """
        if self.item_s is None or self.batch_s is None:
            return None
        ahead = sum(min(len(queue), items) for queue in self._callers.values())
        return (ahead + items) * self.item_s + self._running_s()

    def drain_estimate_s(self, extra_items: int = 0) -> float | None:
        """How long draining the whole queue (plus ``extra_items``) would take (None: unmeasured)."""
        if self.item_s is None or self.batch_s is None:
            return None
        return (self._queued + extra_items) * self.item_s + self._running_s()

    def _running_s(self) -> float:
        """What the batches being processed still need: about one batch time each."""
        assert self.batch_s is not None
        return self.batch_s * len(self._in_flight)

    def _admit(self, items: int, deadline_s: float | None) -> None:
        if self._closing:
            SHED.labels("drain").inc()
            raise OverloadedError("the server is shutting down; retry on another replica")
        if self._queued + items > self.max_queue:
            SHED.labels("queue_full").inc()
            raise OverloadedError(f"the request queue is full ({self.max_queue}); retry with backoff")
        wait = self.estimated_wait_s(items)
        if wait is not None and deadline_s is not None and wait > deadline_s:
            assert self.item_s is not None
            if items * self.item_s > deadline_s:  # the call alone cannot make it: not an overload
                raise TimeoutError(
                    f"the call's deadline ({deadline_s:.3f} s) is shorter than its estimated time "
                    f"({items * self.item_s:.3f} s)"
                )
            SHED.labels("deadline").inc()
            raise OverloadedError(
                f"the estimated wait ({wait:.1f} s) exceeds the call's deadline ({deadline_s:.1f} s); "
                "retry with backoff"
            )
        drain = self.drain_estimate_s(items)
        if self.drain_s and drain is not None and drain > self.drain_s:
            SHED.labels("drain").inc()
            raise OverloadedError(
                f"the queued work ({drain:.1f} s) would not drain within the shutdown grace "
                f"({self.drain_s:.1f} s); retry with backoff"
            )

    # -- submitting ---------------------------------------------------------------------

    async def submit(self, item: ItemT, deadline_s: float | None = None) -> ResultT:
        """One item as its own caller."""
        (future,) = self.enqueue([item], deadline_s)
        return await future

    def enqueue(
        self, items: Sequence[ItemT], deadline_s: float | None = None
    ) -> list[asyncio.Future[ResultT]]:
        """Admit ``items`` as one caller (all or none); one future per item, in order.

        Raises :class:`OverloadedError` when the call is shed (see the module doc).
        """
        self._admit(len(items), deadline_s)
        loop = asyncio.get_running_loop()
        queue: deque[_Pending[ItemT, ResultT]] = deque(
            _Pending(item, loop.create_future(), self._waits_first(item)) for item in items
        )
        if queue:
            self._callers[next(self._ids)] = queue
            self._queued += len(queue)
            self._queued_waiting_first += sum(p.waits_first for p in queue)
            self._peak_open = max(self._peak_open, self._open_items())
            self._arrived.set()
            self._changed.set()
        return [pending.future for pending in queue]

    # -- the loop -----------------------------------------------------------------------

    def _take_round_robin(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        """Fill ``batch`` with one item of each caller in turn; drop callers that have gone."""
        while len(batch) < self.max_batch and self._callers:
            for key in list(self._callers):
                queue = self._callers[key]
                while queue and queue[0].future.done():  # cancelled callers
                    self._pop(queue)
                if queue:
                    batch.append(self._pop(queue))
                if not queue:
                    del self._callers[key]
                else:  # this caller goes to the back of the line
                    self._callers[key] = self._callers.pop(key)
                if len(batch) >= self.max_batch:
                    break

    def _pop(self, queue: deque[_Pending[ItemT, ResultT]]) -> _Pending[ItemT, ResultT]:
        pending = queue.popleft()
        self._queued -= 1
        self._queued_waiting_first -= pending.waits_first
        return pending

    async def _next_batch(self) -> list[_Pending[ItemT, ResultT]]:
        """The next batch, once one may start (:meth:`_may_start`); empty if its callers went."""
        while not self._may_start():
            self._changed.clear()
            await self._changed.wait()
        batch = self._forming = []
        try:
            self._take_round_robin(batch)
            self.dispatched[await self._fill(batch)] += 1
        finally:
            self._forming = []
        self._last_size = len(batch)
        return [p for p in batch if not p.future.done()]

    def _open_items(self) -> int:
        """Items admitted and not yet answered: queued, in the batch being formed, or running."""
        return self._queued + len(self._forming) + self._running_items

    def _may_start(self) -> bool:
        """Whether a batch may start now: items are queued, and no batch is running, or one
        is and there is room for another that has a wait to overlap with it."""
        if not self._queued:
            return False
        if not self._in_flight:
            return True
        return len(self._in_flight) < self.max_in_flight and self._queued_waiting_first > 0

    async def _fill(self, batch: list[_Pending[ItemT, ResultT]]) -> str:
        """Add queued items to ``batch``; wait for more only while it is smaller than the company
        seen lately (:meth:`_expected`)."""
        by_last_batch_only = self._cohort_cooldown > 0 or not self.merge_cohorts
        if self._cohort_cooldown:
            self._cohort_cooldown -= 1
        waiting_for_open_from: int | None = None  # batch size when only open requests kept it waiting
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while True:
            if len(batch) >= self.max_batch:
                return "full"
            if self._queued:
                self._take_round_robin(batch)
                continue
            if len(batch) >= self._expected(by_last_batch_only):
                return "expected"
            if waiting_for_open_from is None and len(batch) >= self._last_size:
                waiting_for_open_from = len(batch)
            remaining = deadline - loop.time()
            if remaining <= 0:
                if waiting_for_open_from == len(batch):  # nobody came back: callers do not return
                    self._cohort_cooldown = COHORT_COOLDOWN
                return "window"
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)

    def _expected(self, by_last_batch_only: bool) -> int:
        """The batch size worth waiting for: the previous batch's, or the most items open at once
        since it started (the callers of a running batch come back when answered)."""
        company = self._last_size if by_last_batch_only else max(self._last_size, self._peak_open)
        return min(self.max_batch, company)

    def _measure(self, size: int, seconds: float) -> None:
        """Update the estimates; the first batch (cold caches, first connections) is not used.

        ``seconds`` is the batch's own share of the time: with batches in flight
        together, from when it started or the previous one finished, whichever is
        later, to when it finished.

        Per-item cost falls with batch size, so once half-full batches have been
        seen, only those update ``item_s``: under load, when estimates matter, the
        batches are full.
        """
        self.batches += 1
        if self.batches == 1:
            return
        per_item = seconds / size
        large = size >= max(1, self.max_batch // 2)
        if self.item_s is None or self.batch_s is None:
            self.item_s, self.batch_s = per_item, seconds
        else:
            if large or not self._seen_large:
                self.item_s += EWMA_WEIGHT * (per_item - self.item_s)
            self.batch_s += EWMA_WEIGHT * (seconds - self.batch_s)
        if large and not self._seen_large:
            self._seen_large = True
            self.item_s = per_item

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            running = loop.create_task(self._run_batch(batch), name="micro-batch")
            self._in_flight.add(running)
            running.add_done_callback(self._finished)
            self._running_items += len(batch)
            self._peak_open = self._open_items()  # a new window on the company

    def _finished(self, running: asyncio.Task[None]) -> None:
        self._in_flight.discard(running)
        self._changed.set()

    async def _run_batch(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        started = time.perf_counter()
        try:
            results = list(await self._process([p.item for p in batch]))
            if len(results) != len(batch):
                raise RuntimeError(f"process() answered {len(results)} items of a batch of {len(batch)}")
        except asyncio.CancelledError:  # close(): the server is going away
            self._running_items -= len(batch)
            _fail(batch, OverloadedError("the server is shutting down"))
            raise
        except Exception as error:  # a bug in process(): fail this batch, keep serving
            logger.exception("batch of %d failed", len(batch))
            results = [error] * len(batch)
        done = time.perf_counter()
        self._measure(len(batch), done - max(started, self._last_done))
        self._last_done = done
        # Before the answers: a caller may send its next request as soon as it has one.
        self._running_items -= len(batch)
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)


def _fail(pending: Iterable[_Pending[Any, Any]], error: BaseException) -> None:
    for each in pending:
        if not each.future.done():
            each.future.set_exception(error)
