"""The InferenceService gRPC servicer: validated work items into the micro-batcher, answers out.

Conversion and validation live in ``raee.wire``; errors become statuses in the
server's interceptor.
"""

from __future__ import annotations

import asyncio

from grpc import aio

from inference_service.batcher import MicroBatcher
from inference_service.catalog import TaskCatalog
from raee.errors import UpstreamUnavailableError
from raee.settings import InferenceSettings
from raee.v1 import common_pb2, inference_pb2, inference_pb2_grpc, retrieval_pb2
from raee.wire.inference import (
    Outcome,
    WorkItem,
    classify_response,
    classify_result,
    work_item,
    work_items,
)

SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["InferenceService"].full_name


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """``batcher`` is set once the backbone is loaded; until then calls are UNAVAILABLE."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.batcher: MicroBatcher[WorkItem, Outcome] | None = None
        self.catalog: TaskCatalog | None = None

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: aio.ServicerContext
    ) -> inference_pb2.ClassifyResponse:
        item = work_item(request, self.settings.max_text_chars)
        timeout = self._timeout(context)
        outcome = await asyncio.wait_for(self._batcher().submit(item, timeout), timeout)
        return classify_response(outcome)

    async def ClassifyBatch(
        self, request: inference_pb2.ClassifyBatchRequest, context: aio.ServicerContext
    ) -> inference_pb2.ClassifyBatchResponse:
        items = work_items(request, self.settings.max_text_chars, self.settings.max_batch_requests)
        timeout = self._timeout(context)
        # One caller of the fair scheduler: admitted whole, or refused whole (RESOURCE_EXHAUSTED).
        futures = self._batcher().enqueue([i for i in items if isinstance(i, WorkItem)], timeout)
        try:
            pending: set[asyncio.Future[Outcome]] = set()
            if futures:
                _, pending = await asyncio.wait(futures, timeout=timeout)
        finally:
            # On a timeout or a cancelled call, cancel what is left and collect every
            # outcome: no exception is left "never retrieved".
            for future in futures:
                future.cancel()
            answers = iter([_outcome_of(future) for future in futures])
        if pending:
            raise TimeoutError(f"the batch did not finish within the deadline ({len(pending)} items left)")
        outcomes = [next(answers) if isinstance(item, WorkItem) else item for item in items]
        return inference_pb2.ClassifyBatchResponse(results=[classify_result(o) for o in outcomes])

    def _timeout(self, context: aio.ServicerContext) -> float:
        """The caller's deadline, or the server's default for calls that set none."""
        remaining = context.time_remaining()
        return float(remaining) if remaining is not None else self.settings.default_deadline_s

    def _batcher(self) -> MicroBatcher[WorkItem, Outcome]:
        if self.batcher is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        return self.batcher

    async def ListTasks(
        self, request: retrieval_pb2.ListTasksRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ListTasksResponse:
        return retrieval_pb2.ListTasksResponse(tasks=await self._catalog().infos())

    async def GetTask(
        self, request: retrieval_pb2.GetTaskRequest, context: aio.ServicerContext
    ) -> common_pb2.TaskInfo:
        return await self._catalog().info(request.task)

    def _catalog(self) -> TaskCatalog:
        if self.catalog is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        return self.catalog


def _outcome_of(future: asyncio.Future[Outcome]) -> Outcome | BaseException:
    """A finished item's answer or error (which then counts as retrieved)."""
    if future.cancelled():
        return UpstreamUnavailableError("the item was cancelled")
    return future.exception() or future.result()
