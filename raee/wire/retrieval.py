"""The ``raee.v1.RetrievalService`` API: its domain objects, their protos, and a typed client.

The retrieval servicer turns requests into :class:`ExitQuery` and
:class:`ExitAnswer` into responses; the inference worker calls the service
through :class:`RetrievalClient` and gets :class:`ExitPlan` objects back, never
protos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc
import numpy as np

from raee.errors import (
    InvalidArgumentError,
    RemoteError,
    TaskNotFoundError,
    UpstreamUnavailableError,
)
from raee.exit_info import ExitInfo, best_exit
from raee.exit_rule import ExitDecision, Fallback
from raee.serving.errors import status_code_value
from raee.store import Neighbour, TaskVersion
from raee.tasks import TaskSpec
from raee.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from raee.wire import common
from raee.wire.validate import check_range, require_task, require_text, validate_each

FALLBACK_TO_WIRE: dict[Fallback, retrieval_pb2.FallbackReason.ValueType] = {
    Fallback.NONE: retrieval_pb2.FALLBACK_REASON_NONE,
    Fallback.NO_NEIGHBOURS: retrieval_pb2.FALLBACK_REASON_NO_NEIGHBOURS,
    Fallback.NO_EXIT_INFORMATION: retrieval_pb2.FALLBACK_REASON_NO_EXIT_INFORMATION,
}
FALLBACK_FROM_WIRE = {wire: fallback for fallback, wire in FALLBACK_TO_WIRE.items()}


# -- domain objects ---------------------------------------------------------------------


@dataclass(frozen=True)
class ExitQuery:
    """One validated exit-distribution query: a text or a ready embedding."""

    task: str
    k: int
    text: str | None = None
    embedding: np.ndarray | None = None
    include_neighbours: bool = False


@dataclass(frozen=True)
class ExitAnswer:
    """The retrieval engine's answer to one query."""

    decision: ExitDecision
    neighbours: list[Neighbour]
    version: TaskVersion
    timing_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExitPlan:
    """What the worker needs of an answer: where to exit, and what to report about it."""

    exit_layer: int
    fallback: Fallback
    task_version: str
    backbone_id: str
    distribution: tuple[float, ...] = ()


@dataclass(frozen=True)
class RemoteTask:
    """A published task as the retrieval service describes it."""

    spec: TaskSpec
    version: str
    backbone_id: str
    best_exit: int | None = None  # the best single exit at ingest (None: not measured)


@dataclass(frozen=True)
class QueryLimits:
    """The service's bounds on a query."""

    default_k: int
    max_k: int
    max_text_chars: int


# -- service side -----------------------------------------------------------------------


def exit_query(request: retrieval_pb2.ExitDistributionRequest, limits: QueryLimits) -> ExitQuery:
    """Validate a request into a query; every error names the offending field."""
    task = require_task(request.task)
    k = check_range("k", request.k, 1, limits.max_k) if request.HasField("k") else limits.default_k
    include = request.include_neighbours
    if request.WhichOneof("query") == "embedding":
        values = np.asarray(request.embedding.values, dtype=np.float32)
        if not np.all(np.isfinite(values)):
            raise InvalidArgumentError("embedding", "values must be finite numbers (no NaN or infinity)")
        return ExitQuery(task, k, embedding=values, include_neighbours=include)
    if request.WhichOneof("query") is None:
        raise InvalidArgumentError("text", "give a non-empty text or an embedding")
    text = require_text(request.text, limits.max_text_chars)
    return ExitQuery(task, k, text=text, include_neighbours=include)


def exit_queries(
    request: retrieval_pb2.BatchExitDistributionRequest, limits: QueryLimits, max_items: int
) -> list[ExitQuery | InvalidArgumentError]:
    """Each item's query, or that item's own validation error (a bad task name included)."""
    return validate_each(request.requests, max_items, lambda item: exit_query(item, limits))


def exit_response(answer: ExitAnswer, include_neighbours: bool) -> retrieval_pb2.ExitDistributionResponse:
    decision = answer.decision
    response = retrieval_pb2.ExitDistributionResponse(
        distribution=decision.distribution.tolist(),
        exit_layer=decision.exit_layer,
        num_layers=answer.version.num_layers,
        fallback=FALLBACK_TO_WIRE[decision.fallback],
        task_version=answer.version.version,
        backbone_id=answer.version.backbone_id,
        timing=retrieval_pb2.RetrievalTiming(**answer.timing_ms),
    )
    if include_neighbours:
        response.neighbours.extend(
            neighbour_message(neighbour, weight)
            for neighbour, weight in zip(answer.neighbours, decision.weights, strict=True)
        )
    return response


def exit_result(
    outcome: ExitAnswer | BaseException, include_neighbours: bool
) -> retrieval_pb2.ExitDistributionResult:
    if isinstance(outcome, BaseException):
        return retrieval_pb2.ExitDistributionResult(error=common.error(outcome))
    return retrieval_pb2.ExitDistributionResult(response=exit_response(outcome, include_neighbours))


def neighbour_message(neighbour: Neighbour, weight: float) -> retrieval_pb2.Neighbour:
    return retrieval_pb2.Neighbour(
        id=neighbour.point_id,
        example_id=neighbour.example_id,
        similarity=neighbour.similarity,
        weight=weight,
        label=neighbour.label,
        exit_layers=neighbour.exit.layers,
        exit_probs=neighbour.exit.probs,
        text=neighbour.text,
    )


# -- client side ------------------------------------------------------------------------


def neighbour_from_message(message: retrieval_pb2.Neighbour, spec: TaskSpec) -> Neighbour:
    """A neighbour of an exit-distribution response, as the store returned it to the service."""
    return Neighbour(
        point_id=message.id,
        similarity=message.similarity,
        example_id=message.example_id,
        text=message.text,
        label=message.label,
        label_index=spec.label_index(message.label),
        exit=ExitInfo(tuple(message.exit_layers), tuple(message.exit_probs)),
    )


def exit_plan(response: retrieval_pb2.ExitDistributionResponse, with_distribution: bool) -> ExitPlan:
    fallback = FALLBACK_FROM_WIRE.get(response.fallback)
    if fallback is None:
        raise RemoteError(status_code_value(grpc.StatusCode.INTERNAL), "retrieval: unknown fallback reason")
    return ExitPlan(
        exit_layer=int(response.exit_layer),
        fallback=fallback,
        task_version=response.task_version,
        backbone_id=response.backbone_id,
        distribution=tuple(response.distribution) if with_distribution else (),
    )


@dataclass(frozen=True)
class PlanRequest:
    """One RAEE item the worker needs an exit for."""

    task: str
    text: str
    k: int | None = None
    with_distribution: bool = False


class RetrievalClient:
    """The inference worker's typed view of the retrieval service.

    Errors come back as domain errors: :class:`TaskNotFoundError`,
    :class:`UpstreamUnavailableError` (the service cannot answer now), or
    :class:`RemoteError` (the service refused, with its status).
    """

    def __init__(
        self,
        stub: retrieval_pb2_grpc.RetrievalServiceStub,
        *,
        timeout_s: float,
        metadata: tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        self._stub = stub
        self.timeout_s = timeout_s
        self._metadata = metadata

    async def get_task(self, task: str) -> RemoteTask:
        try:
            info: common_pb2.TaskInfo = await self._stub.GetTask(
                retrieval_pb2.GetTaskRequest(task=task), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error, task) from None
        best = best_exit(list(info.accuracy_per_exit_pct))
        if best is not None and not 0 <= best <= info.num_layers:
            best = None
        return RemoteTask(common.task_spec(info.spec, f"task {task}"), info.version, info.backbone_id, best)

    async def task_info(self, task: str) -> common_pb2.TaskInfo:
        """The task's published version as the service describes it (relayed as is)."""
        try:
            info: common_pb2.TaskInfo = await self._stub.GetTask(
                retrieval_pb2.GetTaskRequest(task=task), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error, task) from None
        return info

    async def task_infos(self) -> list[common_pb2.TaskInfo]:
        """Every published task (relayed as is)."""
        try:
            response: retrieval_pb2.ListTasksResponse = await self._stub.ListTasks(
                retrieval_pb2.ListTasksRequest(), timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error, None) from None
        return list(response.tasks)

    async def exit_plans(self, items: Sequence[PlanRequest]) -> list[ExitPlan | RemoteError]:
        """One plan per item, or that item's own error; the whole call fails as one domain error."""
        request = retrieval_pb2.BatchExitDistributionRequest(
            requests=[
                retrieval_pb2.ExitDistributionRequest(task=item.task, text=item.text, k=item.k)
                for item in items
            ]
        )
        try:
            response: retrieval_pb2.BatchExitDistributionResponse = await self._stub.BatchGetExitDistribution(
                request, timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error, None) from None
        if len(response.results) != len(items):
            raise UpstreamUnavailableError("retrieval answered a different number of items than asked")
        plans: list[ExitPlan | RemoteError] = []
        for item, result in zip(items, response.results, strict=True):
            if result.HasField("error"):
                plans.append(RemoteError(result.error.code, result.error.message))
            else:
                plans.append(exit_plan(result.response, item.with_distribution))
        return plans


def _domain_error(error: grpc.aio.AioRpcError, task: str | None) -> Exception:
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND and task is not None:
        return TaskNotFoundError(task)
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        return RemoteError(status_code_value(code), error.details() or code.name)
    details = (error.details() or "")[:200]
    return UpstreamUnavailableError(f"retrieval {code.name}: {details}", reason=code.name.lower())
