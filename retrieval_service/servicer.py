"""The RetrievalService gRPC servicer: validated queries in, the engine's answers out.

Conversion and validation live in ``raee.wire``; the engine does the work; errors
become statuses in the server's interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from grpc import aio

from raee.errors import UpstreamUnavailableError
from raee.serving.metrics import EXIT_LAYER, FALLBACKS, RETRIEVAL_STAGE_SECONDS
from raee.settings import RetrievalSettings
from raee.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from raee.wire import common
from raee.wire.retrieval import ExitAnswer, ExitQuery, QueryLimits, exit_queries, exit_query, exit_response
from raee.wire.retrieval import exit_result as to_result
from raee.wire.validate import require_task
from retrieval_service.engine import RetrievalEngine

SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
ResultT = TypeVar("ResultT")


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """``engine`` is set once models are loaded; until then calls are UNAVAILABLE."""

    def __init__(self, settings: RetrievalSettings) -> None:
        self.settings = settings
        self.limits = QueryLimits(settings.default_k, settings.max_k, settings.max_text_chars)
        self.engine: RetrievalEngine | None = None
        # One thread: the encoder and the store are used by one call at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")

    async def GetExitDistribution(
        self, request: retrieval_pb2.ExitDistributionRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ExitDistributionResponse:
        (answer,) = await self._answer([exit_query(request, self.limits)], context)
        if isinstance(answer, Exception):
            raise answer
        return exit_response(answer, request.include_neighbours)

    async def BatchGetExitDistribution(
        self, request: retrieval_pb2.BatchExitDistributionRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.BatchExitDistributionResponse:
        queries = exit_queries(request, self.limits, self.settings.max_batch_requests)
        valid = [query for query in queries if isinstance(query, ExitQuery)]
        answers = iter(await self._answer(valid, context)) if valid else iter(())
        outcomes = [query if isinstance(query, Exception) else next(answers) for query in queries]
        return retrieval_pb2.BatchExitDistributionResponse(
            results=[
                to_result(outcome, item.include_neighbours)
                for item, outcome in zip(request.requests, outcomes, strict=True)
            ]
        )

    async def ListTasks(
        self, request: retrieval_pb2.ListTasksRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ListTasksResponse:
        versions = await self._run(context, self._engine().store.list_tasks)
        return retrieval_pb2.ListTasksResponse(tasks=[common.task_info(v) for v in versions])

    async def GetTask(
        self, request: retrieval_pb2.GetTaskRequest, context: aio.ServicerContext
    ) -> common_pb2.TaskInfo:
        task = require_task(request.task)
        return common.task_info(await self._run(context, self._engine().store.get_task, task))

    # -- internals ----------------------------------------------------------------------

    def _engine(self) -> RetrievalEngine:
        if self.engine is None:
            raise UpstreamUnavailableError("the retrieval service is still loading its models")
        return self.engine

    def _timeout(self, context: aio.ServicerContext) -> float:
        """The caller's deadline, or the server's default for calls that set none."""
        remaining = context.time_remaining()
        return float(remaining) if remaining is not None else self.settings.default_deadline_s

    async def _run(
        self, context: aio.ServicerContext, function: Callable[..., ResultT], *args: Any
    ) -> ResultT:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(self._executor, function, *args), self._timeout(context)
        )

    async def _answer(
        self, queries: Sequence[ExitQuery], context: aio.ServicerContext
    ) -> list[ExitAnswer | Exception]:
        answers = await self._run(context, self._engine().answer, queries)
        for answer in answers:
            if isinstance(answer, ExitAnswer):
                _observe(answer)
        return answers

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _observe(answer: ExitAnswer) -> None:
    EXIT_LAYER.labels("retrieval", "raee").observe(answer.decision.exit_layer)
    if answer.decision.fallback.value:
        FALLBACKS.labels(answer.decision.fallback.name.lower()).inc()
    for stage, ms in answer.timing_ms.items():
        RETRIEVAL_STAGE_SECONDS.labels(stage.removesuffix("_ms")).observe(ms / 1000)
