"""Run the inference worker: ``raee serve inference``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from grpc import aio

from inference_service.batcher import MicroBatcher
from inference_service.servicer import SERVICE_NAME, InferenceServicer
from inference_service.worker import InferenceWorker
from raee.backbone import Backbone
from raee.serving.metrics import serve_metrics_of
from raee.serving.security import ServerSecurity, bearer_metadata, channel_credentials, open_channel
from raee.serving.server import (
    MAX_MESSAGE_BYTES,
    RunningServer,
    start_server,
    wait_for_shutdown_signal,
)
from raee.settings import InferenceSettings
from raee.v1 import inference_pb2_grpc, retrieval_pb2_grpc
from raee.wire.inference import Outcome, WorkItem
from raee.wire.retrieval import RetrievalClient

logger = logging.getLogger(__name__)

DRAIN_MARGIN = 0.8


@dataclass
class InferenceServer:
    running: RunningServer
    batcher: MicroBatcher[WorkItem, Outcome]
    worker: InferenceWorker
    channel: aio.Channel

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float) -> None:
        await self.running.stop(grace_s)
        await self.batcher.close()
        self.worker.close()
        await self.channel.close()


async def start(settings: InferenceSettings, *, backbone: Backbone | None = None) -> InferenceServer:
    """Start serving at once (NOT_SERVING), load the backbone, then report SERVING."""
    servicer = InferenceServicer(settings)
    running = await start_server(
        port=settings.port,
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        security=ServerSecurity.of(settings),
    )
    logger.info("inference worker listening on port %d; loading backbone", running.port)
    if backbone is None:
        backbone = await asyncio.to_thread(Backbone.load, settings.backbone)
    # dns:/// with round_robin spreads calls over every retrieval pod behind a headless Service.
    target = (
        settings.retrieval_addr if "://" in settings.retrieval_addr else f"dns:///{settings.retrieval_addr}"
    )
    credentials = channel_credentials(
        settings.retrieval_tls_ca, settings.retrieval_tls_cert, settings.retrieval_tls_key
    )
    channel = open_channel(
        target,
        credentials,
        [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES), ("grpc.lb_policy_name", "round_robin")],
    )
    retrieval = RetrievalClient(
        retrieval_pb2_grpc.RetrievalServiceStub(channel),
        timeout_s=settings.retrieval_timeout_ms / 1000,
        metadata=bearer_metadata(settings.retrieval_token.get_secret_value()),
    )
    worker = InferenceWorker(backbone, retrieval, task_ttl_s=settings.task_ttl_s)
    batcher: MicroBatcher[WorkItem, Outcome] = MicroBatcher(
        worker.process,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        # Admit only what drains within the grace period (with a margin for the estimate).
        drain_s=settings.grace_s * DRAIN_MARGIN,
    )
    batcher.start()
    servicer.batcher = batcher
    await running.set_serving(True)
    logger.info("inference worker SERVING %s (retrieval at %s)", backbone.id, settings.retrieval_addr)
    return InferenceServer(running, batcher, worker, channel)


async def serve(settings: InferenceSettings) -> None:
    serve_metrics_of(settings, settings.metrics_port)
    server = await start(settings)
    await wait_for_shutdown_signal()
    await server.stop(settings.grace_s)
    logger.info("inference worker stopped")
