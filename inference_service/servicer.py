"""The InferenceService gRPC servicer: validates requests and feeds the micro-batcher."""

from __future__ import annotations

import asyncio
from typing import cast

from grpc import aio

from inference_service.batcher import MicroBatcher
from inference_service.worker import Mode, Outcome, WorkItem
from raee.serving.config import InferenceConfig
from raee.serving.errors import InvalidArgumentError, UpstreamUnavailableError, status_of
from raee.tasks import check_task_name
from raee.v1 import common_pb2, inference_pb2, inference_pb2_grpc, retrieval_pb2

SERVICE_NAME = "raee.v1.InferenceService"


class InferenceServicer(inference_pb2_grpc.InferenceServiceServicer):
    """``batcher`` is set once the backbone is loaded; until then calls are UNAVAILABLE."""

    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        self.batcher: MicroBatcher[WorkItem, Outcome] | None = None

    async def Classify(
        self, request: inference_pb2.ClassifyRequest, context: aio.ServicerContext
    ) -> inference_pb2.ClassifyResponse:
        item = self.work_item(request)
        return to_response(await asyncio.wait_for(self._batcher().submit(item), self._timeout(context)))

    async def ClassifyBatch(
        self, request: inference_pb2.ClassifyBatchRequest, context: aio.ServicerContext
    ) -> inference_pb2.ClassifyBatchResponse:
        if not request.requests:
            raise InvalidArgumentError("requests", "must not be empty")
        limit = self.config.max_batch_requests
        if len(request.requests) > limit:
            raise InvalidArgumentError("requests", f"{len(request.requests)} exceed the limit of {limit}")
        batcher = self._batcher()
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(self._one(batcher, item) for item in request.requests), return_exceptions=True),
            self._timeout(context),
        )
        results = []
        for outcome in outcomes:
            if isinstance(outcome, Outcome):
                results.append(inference_pb2.ClassifyResult(response=to_response(outcome)))
            elif isinstance(outcome, Exception):
                code, message = status_of(outcome)
                error = common_pb2.Error(code=code.value[0], message=message)
                results.append(inference_pb2.ClassifyResult(error=error))
            else:  # CancelledError and friends: the call itself is going away
                raise outcome
        return inference_pb2.ClassifyBatchResponse(results=results)

    async def _one(
        self, batcher: MicroBatcher[WorkItem, Outcome], item: inference_pb2.ClassifyRequest
    ) -> Outcome:
        return await batcher.submit(self.work_item(item))

    def _timeout(self, context: aio.ServicerContext) -> float:
        """The client's deadline, or the server's default for calls that set none."""
        remaining = context.time_remaining()
        return float(remaining) if remaining is not None else self.config.default_deadline_s

    def _batcher(self) -> MicroBatcher[WorkItem, Outcome]:
        if self.batcher is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        return self.batcher

    def work_item(self, request: inference_pb2.ClassifyRequest) -> WorkItem:
        """Validate a request; every error names the offending field."""
        if not request.task:
            raise InvalidArgumentError("task", "is required")
        check_task_name(request.task)
        if not request.text.strip():
            raise InvalidArgumentError("text", "must not be empty")
        if len(request.text) > self.config.max_text_chars:
            raise InvalidArgumentError(
                "text", f"{len(request.text)} characters exceed the limit of {self.config.max_text_chars}"
            )
        if request.mode not in (0, *(m.value for m in Mode)):
            raise InvalidArgumentError("mode", f"unknown mode {request.mode}")
        mode = Mode(request.mode or Mode.RAEE)
        layer = request.layer if request.HasField("layer") else None
        if layer is not None and mode is not Mode.FIXED:
            raise InvalidArgumentError("layer", "is only valid with MODE_FIXED")
        if layer is None and mode is Mode.FIXED:
            raise InvalidArgumentError("layer", "is required with MODE_FIXED")
        k = request.k if request.HasField("k") else None
        if k is not None and k < 1:
            raise InvalidArgumentError("k", f"{k} must be at least 1")
        return WorkItem(request.task, request.text, mode, layer, k, request.include_distribution)


def to_response(outcome: Outcome) -> inference_pb2.ClassifyResponse:
    return inference_pb2.ClassifyResponse(
        label=outcome.label,
        label_index=outcome.label_index,
        probabilities=outcome.probabilities,
        exit_layer=outcome.exit_layer,
        num_layers=outcome.num_layers,
        retrieval_ms=outcome.retrieval_ms,
        forward_ms=outcome.forward_ms,
        degraded=outcome.degraded,
        degraded_reason=outcome.degraded_reason,
        fallback=cast("retrieval_pb2.FallbackReason.ValueType", outcome.fallback),
        distribution=outcome.distribution,
        task_version=outcome.task_version,
        batch_group_size=outcome.batch_group_size,
    )
