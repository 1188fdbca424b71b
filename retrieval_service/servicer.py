"""The RetrievalService gRPC servicer: validates requests, runs the engine, builds responses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

import numpy as np
from grpc import aio

from raee.serving.config import RetrievalConfig
from raee.serving.errors import InvalidArgumentError, UpstreamUnavailableError, status_of
from raee.serving.metrics import EXIT_LAYER, FALLBACKS, RETRIEVAL_STAGE_SECONDS
from raee.store import TaskVersion
from raee.tasks import check_task_name
from raee.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from retrieval_service.engine import Answer, Query, RetrievalEngine

SERVICE_NAME = "raee.v1.RetrievalService"
ResultT = TypeVar("ResultT")


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    """``engine`` is set once models are loaded; until then calls are UNAVAILABLE."""

    def __init__(self, config: RetrievalConfig) -> None:
        self.config = config
        self.engine: RetrievalEngine | None = None
        # One thread: the encoder and the store are used by one call at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")

    async def GetExitDistribution(
        self, request: retrieval_pb2.ExitDistributionRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ExitDistributionResponse:
        (result,) = await self._answer([self._query(request)])
        if isinstance(result, Exception):
            raise result
        return to_response(result, request.include_neighbours)

    async def BatchGetExitDistribution(
        self, request: retrieval_pb2.BatchExitDistributionRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.BatchExitDistributionResponse:
        if not request.requests:
            raise InvalidArgumentError("requests", "must not be empty")
        if len(request.requests) > self.config.max_batch_requests:
            raise InvalidArgumentError(
                "requests", f"{len(request.requests)} exceed the limit of {self.config.max_batch_requests}"
            )
        queries: list[Query | Exception] = []
        for item in request.requests:
            try:
                queries.append(self._query(item))
            except InvalidArgumentError as error:
                queries.append(error)
        valid = [q for q in queries if isinstance(q, Query)]
        answers = iter(await self._answer(valid)) if valid else iter(())
        results = []
        for item, query in zip(request.requests, queries, strict=True):
            outcome = query if isinstance(query, Exception) else next(answers)
            if isinstance(outcome, Exception):
                code, message = status_of(outcome)
                results.append(
                    retrieval_pb2.ExitDistributionResult(
                        error=common_pb2.Error(code=code.value[0], message=message)
                    )
                )
            else:
                results.append(
                    retrieval_pb2.ExitDistributionResult(
                        response=to_response(outcome, item.include_neighbours)
                    )
                )
        return retrieval_pb2.BatchExitDistributionResponse(results=results)

    async def ListTasks(
        self, request: retrieval_pb2.ListTasksRequest, context: aio.ServicerContext
    ) -> retrieval_pb2.ListTasksResponse:
        engine = self._engine()
        versions = await self._run(engine.store.list_tasks)
        return retrieval_pb2.ListTasksResponse(tasks=[task_info(v) for v in versions])

    async def GetTask(
        self, request: retrieval_pb2.GetTaskRequest, context: aio.ServicerContext
    ) -> common_pb2.TaskInfo:
        _require_task(request.task)
        engine = self._engine()
        return task_info(await self._run(engine.store.get_task, request.task))

    # -- internals ----------------------------------------------------------------------

    def _engine(self) -> RetrievalEngine:
        if self.engine is None:
            raise UpstreamUnavailableError("the retrieval service is still loading its models")
        return self.engine

    async def _run(self, function: Callable[..., ResultT], *args: Any) -> ResultT:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, function, *args)

    async def _answer(self, queries: Sequence[Query]) -> list[Answer | Exception]:
        engine = self._engine()
        answers = await asyncio.wait_for(self._run(engine.answer, queries), self.config.default_deadline_s)
        for answer in answers:
            if isinstance(answer, Answer):
                _observe(answer)
        return answers

    def _query(self, request: retrieval_pb2.ExitDistributionRequest) -> Query:
        _require_task(request.task)
        k = request.k if request.HasField("k") else self.config.default_k
        if not 1 <= k <= self.config.max_k:
            raise InvalidArgumentError("k", f"{k} is outside 1..{self.config.max_k}")
        which = request.WhichOneof("query")
        if which == "embedding":
            values = np.asarray(request.embedding.values, dtype=np.float32)
            return Query(request.task, k, embedding=values, include_neighbours=request.include_neighbours)
        text = request.text
        if which is None or not text.strip():
            raise InvalidArgumentError("text", "give a non-empty text or an embedding")
        if len(text) > self.config.max_text_chars:
            raise InvalidArgumentError(
                "text", f"{len(text)} characters exceed the limit of {self.config.max_text_chars}"
            )
        return Query(request.task, k, text=text, include_neighbours=request.include_neighbours)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _require_task(task: str) -> None:
    if not task:
        raise InvalidArgumentError("task", "is required")
    check_task_name(task)


def _observe(answer: Answer) -> None:
    EXIT_LAYER.labels("retrieval", "raee").observe(answer.decision.exit_layer)
    if answer.decision.fallback.value:
        FALLBACKS.labels(answer.decision.fallback.name.lower()).inc()
    for stage, ms in answer.timing_ms.items():
        RETRIEVAL_STAGE_SECONDS.labels(stage.removesuffix("_ms")).observe(ms / 1000)


def to_response(answer: Answer, include_neighbours: bool) -> retrieval_pb2.ExitDistributionResponse:
    decision = answer.decision
    response = retrieval_pb2.ExitDistributionResponse(
        distribution=decision.distribution.tolist(),
        exit_layer=decision.exit_layer,
        num_layers=answer.version.num_layers,
        fallback=cast("retrieval_pb2.FallbackReason.ValueType", decision.fallback.value),
        task_version=answer.version.version,
        backbone_id=answer.version.backbone_id,
        timing=retrieval_pb2.RetrievalTiming(**answer.timing_ms),
    )
    if include_neighbours:
        for neighbour, weight in zip(answer.neighbours, decision.weights, strict=True):
            response.neighbours.append(
                retrieval_pb2.Neighbour(
                    id=neighbour.point_id,
                    example_id=neighbour.example_id,
                    similarity=neighbour.similarity,
                    weight=weight,
                    label=neighbour.label,
                    exit_layers=neighbour.exit.layers,
                    exit_probs=neighbour.exit.probs,
                    text=neighbour.text,
                )
            )
    return response


def task_info(version: TaskVersion) -> common_pb2.TaskInfo:
    spec = version.spec
    return common_pb2.TaskInfo(
        task=version.task,
        version=version.version,
        spec=common_pb2.TaskSpec(
            name=spec.name,
            template=spec.template,
            labels=[common_pb2.Label(name=label.name, word=label.word) for label in spec.labels],
            metric=spec.metric.value,
        ),
        backbone_id=version.backbone_id,
        encoder_id=version.encoder_id,
        num_layers=version.num_layers,
        points=version.points,
        created_at=version.created_at,
        with_correct_exit_pct=float(version.stats.get("with_correct_exit_pct", 0.0)),
        accuracy_per_exit_pct=list(version.stats.get("accuracy_per_exit_pct", [])),
    )
