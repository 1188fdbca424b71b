"""Run the inference worker: ``raee serve inference``."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from grpc import aio

from inference_service import oip_servicer
from inference_service.batcher import MicroBatcher
from inference_service.catalog import TaskCatalog
from inference_service.rest import RestServer, start_rest
from inference_service.servicer import SERVICE_NAME, InferenceServicer
from inference_service.signals import InstrumentedBatcher, warm_up
from inference_service.worker import InferenceWorker
from raee.backbone import Backbone
from raee.oip import grpc_predict_v2_pb2_grpc
from raee.serving import tracing
from raee.serving.metrics import serve_metrics_of
from raee.serving.security import ServerSecurity, bearer_metadata, channel_credentials, open_channel
from raee.serving.server import (
    MAX_MESSAGE_BYTES,
    RunningServer,
    start_server,
    wait_for_shutdown_signal,
)
from raee.settings import InferenceSettings, TracingSettings, load
from raee.v1 import inference_pb2_grpc, retrieval_pb2_grpc
from raee.wire.inference import Outcome, WorkItem
from raee.wire.retrieval import RetrievalClient

logger = logging.getLogger(__name__)

DRAIN_MARGIN = 0.8


# round_robin over every address of the name; the retrieval calls only read, so a call
# that fails UNAVAILABLE (say, cut off as its connection reached its maximum age, or a
# pod going away) is retried at once on another connection, within the same deadline.
RETRIEVAL_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "raee.v1.RetrievalService"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


@dataclass
class InferenceServer:
    running: RunningServer
    batcher: MicroBatcher[WorkItem, Outcome]
    worker: InferenceWorker
    channel: aio.Channel
    rest: RestServer | None = None

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def http_port(self) -> int | None:
        """The REST port, or None when it is off."""
        return self.rest.port if self.rest is not None else None

    async def stop(self, grace_s: float) -> None:
        if self.rest is not None:
            await self.rest.stop(grace_s)
        await self.running.stop(grace_s)
        await self.batcher.close()
        self.worker.close()
        await self.channel.close()


async def start(settings: InferenceSettings, *, backbone: Backbone | None = None) -> InferenceServer:
    """Start serving at once (NOT_SERVING), load the backbone, then report SERVING."""
    servicer = InferenceServicer(settings)
    oip = oip_servicer.OipRunner(settings)

    def register(server: aio.Server) -> None:
        inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server)
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            oip_servicer.OipServicer(oip), server
        )

    running = await start_server(
        port=settings.port,
        register=register,
        service_names=[SERVICE_NAME, oip_servicer.SERVICE_NAME],
        host=settings.listen_host,
        security=ServerSecurity.of(settings),
        max_connection_age_s=settings.max_connection_age_s,
        max_connection_age_grace_s=settings.max_connection_age_grace_s,
    )
    try:
        rest = await start_rest(oip)
    except BaseException:
        await running.stop(0)
        raise
    logger.info("inference worker listening on port %d; loading backbone", running.port)
    if backbone is None:
        backbone = await asyncio.to_thread(Backbone.load, settings.backbone)
    # dns:/// with round_robin spreads calls over every retrieval pod behind a headless Service;
    # the retrieval pods close connections after RAEE_MAX_CONNECTION_AGE_S, and the
    # re-resolution that follows finds pods added since.
    addr = settings.retrieval_addr
    target = addr if "://" in addr else f"dns:///{addr}"
    credentials = channel_credentials(
        settings.retrieval_tls_ca, settings.retrieval_tls_cert, settings.retrieval_tls_key
    )
    channel = open_channel(
        target,
        credentials,
        [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.service_config", RETRIEVAL_SERVICE_CONFIG),
        ],
        tracing.client_interceptors(),  # the trace context travels worker -> retrieval
    )
    retrieval = RetrievalClient(
        retrieval_pb2_grpc.RetrievalServiceStub(channel),
        timeout_s=settings.retrieval_timeout_ms / 1000,
        metadata=bearer_metadata(settings.retrieval_token.get_secret_value()),
    )
    worker = InferenceWorker(
        backbone,
        retrieval,
        task_ttl_s=settings.task_ttl_s,
        overlap_retrieval=settings.overlap_retrieval,
    )
    batcher: MicroBatcher[WorkItem, Outcome] = InstrumentedBatcher(
        worker.process,
        max_batch=settings.max_batch,
        max_wait_s=settings.max_wait_ms / 1000,
        max_queue=settings.max_queue,
        # Admit only what drains within the grace period (with a margin for the estimate).
        drain_s=settings.grace_s * DRAIN_MARGIN,
        max_in_flight=settings.batches_in_flight,
        waits_first=worker.waits_for_retrieval,
    )
    batcher.start()
    servicer.batcher = batcher
    catalog = TaskCatalog(retrieval, str(backbone.id), ttl_s=settings.task_ttl_s)
    servicer.catalog = oip.catalog = catalog
    oip.batcher = batcher
    seconds = await asyncio.to_thread(warm_up, backbone, settings.max_batch)
    logger.info(
        "warm-up: one full-depth batch of %d texts and the row-dropping check in %.2f s",
        settings.max_batch,
        seconds,
    )
    await running.set_serving(True)
    logger.info("inference worker SERVING %s (retrieval at %s)", backbone.id, settings.retrieval_addr)
    return InferenceServer(running, batcher, worker, channel, rest)


async def serve(settings: InferenceSettings) -> None:
    serve_metrics_of(settings, settings.metrics_port)
    tracing.setup("raee-inference", load(TracingSettings))
    server = await start(settings)
    await wait_for_shutdown_signal()
    await server.stop(settings.grace_s)
    logger.info("inference worker stopped")
