"""Operating signals of the worker: queue and in-flight gauges, queue wait, and the warm-up.

:class:`InstrumentedBatcher` is the micro-batcher with three Prometheus series:
``raee_inference_queue_size`` (requests waiting for a batch),
``raee_inference_requests_in_flight`` (submitted, not yet answered) and
``raee_inference_queue_wait_seconds`` (submit to the start of its batch). The
queue size is what an autoscaler (KEDA) scales on.

:func:`warm_up` runs one full-depth batch of ``max_batch`` texts before the worker
reports SERVING, so that the first real requests do not pay for lazy allocation.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from prometheus_client import Gauge, Histogram

from inference_service.batcher import MicroBatcher
from raee.backbone import Backbone
from raee.serving import tracing
from raee.serving.metrics import LATENCY_BUCKETS
from raee.tasks import TaskSpec
from raee.wire.inference import Outcome, WorkItem

logger = logging.getLogger(__name__)

QUEUE_SIZE = Gauge("raee_inference_queue_size", "Requests waiting for a micro-batch")
IN_FLIGHT = Gauge("raee_inference_requests_in_flight", "Requests submitted and not yet answered")
QUEUE_WAIT = Histogram(
    "raee_inference_queue_wait_seconds",
    "Time from submission to the start of the request's micro-batch",
    buckets=LATENCY_BUCKETS,
)

Process = Callable[[Sequence[WorkItem]], Awaitable[Sequence[Outcome | BaseException]]]


class InstrumentedBatcher(MicroBatcher[WorkItem, Outcome]):
    def __init__(
        self,
        process: Process,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        drain_s: float = 0.0,
        max_in_flight: int = 1,
        waits_first: Callable[[WorkItem], bool] | None = None,
    ) -> None:
        self._waiting: dict[int, float] = {}  # id(item) -> submitted at
        self._contexts: dict[int, tuple[Any, int]] = {}  # id(item) -> (trace context, submitted at, ns)
        super().__init__(
            self._instrumented(process),
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            max_queue=max_queue,
            drain_s=drain_s,
            max_in_flight=max_in_flight,
            waits_first=waits_first,
        )

    def enqueue(
        self, items: Sequence[WorkItem], deadline_s: float | None = None
    ) -> list[asyncio.Future[Outcome]]:
        """Every admission path (``submit`` too) comes here: each item is counted until answered."""
        futures = super().enqueue(items, deadline_s)  # raises, counting nothing, when shed
        context = (tracing.current_context(), time.time_ns())
        for item, future in zip(items, futures, strict=True):
            key = id(item)
            self._waiting[key] = time.perf_counter()
            self._contexts[key] = context
            IN_FLIGHT.inc()
            future.add_done_callback(functools.partial(self._answered, key))
        QUEUE_SIZE.set(len(self._waiting))
        return futures

    def _answered(self, key: int, _future: asyncio.Future[Outcome]) -> None:
        IN_FLIGHT.dec()
        self._contexts.pop(key, None)
        if self._waiting.pop(key, None) is not None:  # cancelled before its batch
            QUEUE_SIZE.set(len(self._waiting))

    def _instrumented(self, process: Process) -> Process:
        async def run(items: Sequence[WorkItem]) -> Sequence[Outcome | BaseException]:
            now = time.perf_counter()
            for item in items:
                submitted = self._waiting.pop(id(item), None)
                if submitted is not None:
                    QUEUE_WAIT.observe(now - submitted)
            QUEUE_SIZE.set(len(self._waiting))
            # Each request's queue wait is a span of its own trace; the batch (its retrieval
            # call and forward passes) runs in the first request's trace, linked to the others.
            now_ns = time.time_ns()
            contexts = [self._contexts.pop(id(item), (None, now_ns)) for item in items]
            for context, submitted_ns in contexts:
                tracing.record_span("queue wait", context, submitted_ns, now_ns)
            with (
                tracing.attached(contexts[0][0]),
                tracing.span("micro-batch", links_from=[c for c, _ in contexts[1:]], size=len(items)),
            ):
                return await process(items)

        return run


WARM_UP_SPEC = TaskSpec.from_flags("warm-up", "{text} It was", ["negative=terrible", "positive=great"])


def warm_up(backbone: Backbone, max_batch: int) -> float:
    """One full-depth forward pass over ``max_batch`` texts; its duration in seconds.

    It also settles :attr:`Backbone.drops_rows` (a short check), so that the first
    batch with mixed exits does not pay for it.
    """
    started = time.perf_counter()
    texts = [f"warm-up sentence number {i} , a film like any other ." for i in range(max_batch)]
    backbone.for_task(WARM_UP_SPEC).predict_at(texts, backbone.num_layers)
    _ = backbone.drops_rows
    return time.perf_counter() - started
