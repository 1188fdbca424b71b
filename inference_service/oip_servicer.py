"""KServe's Open Inference Protocol (v2) over gRPC: ``inference.GRPCInferenceService``.

Tasks are models. ModelInfer turns its tensor into one work item per text, submits
them to the same micro-batcher as ``Classify`` and gathers the answers into output
tensors (``raee.wire.oip``); errors become statuses in the server's interceptor.
"""

from __future__ import annotations

import asyncio

from grpc import aio

from inference_service.batcher import MicroBatcher
from inference_service.catalog import TaskCatalog
from raee.errors import TaskNotFoundError, UpstreamUnavailableError
from raee.oip import grpc_predict_v2_pb2 as pb
from raee.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from raee.settings import InferenceSettings
from raee.wire import oip
from raee.wire.inference import Outcome, WorkItem
from raee.wire.validate import require_task

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipRunner:
    """What both OIP front ends (gRPC, REST) share: readiness, metadata, and inference."""

    def __init__(self, settings: InferenceSettings) -> None:
        self.settings = settings
        self.batcher: MicroBatcher[WorkItem, Outcome] | None = None
        self.catalog: TaskCatalog | None = None

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.catalog is not None

    async def model_ready(self, name: str, version: str) -> bool:
        catalog = self._catalog()
        try:
            await catalog.task(require_task(name), version)
        except (TaskNotFoundError, UpstreamUnavailableError, RuntimeError):
            return False
        return True

    async def labels(self, name: str, version: str = "") -> tuple[str, tuple[str, ...]]:
        """The task's current version and label names."""
        task = await self._catalog().task(require_task(name), version)
        return task.version, task.spec.label_names

    async def infer(self, call: oip.InferCall, timeout_s: float) -> tuple[str, list[oip.Tensor]]:
        """Run every text through the micro-batcher; the first failure fails the call."""
        catalog, batcher = self._catalog(), self._batcher()
        if call.version:
            await catalog.task(call.model, call.version)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(item) for item in call.items)), timeout_s
        )
        version = outcomes[0].task_version
        task = await catalog.task(call.model, version)
        return version, oip.output_tensors(call, outcomes, task.spec.label_names)

    def _catalog(self) -> TaskCatalog:
        if self.catalog is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        return self.catalog

    def _batcher(self) -> MicroBatcher[WorkItem, Outcome]:
        if self.batcher is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        return self.batcher


class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, runner: OipRunner) -> None:
        self.runner = runner

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.runner.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=[])

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        if not self.runner.ready:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=await self.runner.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        version, labels = await self.runner.labels(request.name, request.version)
        return oip.grpc_metadata(request.name, version, labels)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: aio.ServicerContext
    ) -> pb.ModelInferResponse:
        settings = self.runner.settings
        call = oip.grpc_call(
            request, max_text_chars=settings.max_text_chars, max_items=settings.max_batch_requests
        )
        remaining = context.time_remaining()
        timeout = float(remaining) if remaining is not None else settings.default_deadline_s
        version, tensors = await self.runner.infer(call, timeout)
        return oip.grpc_response(call, version, tensors, raw=bool(request.raw_input_contents))
