"""Run the inference worker: ``raee serve inference``."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from grpc import aio

from inference_service.batcher import MicroBatcher
from inference_service.servicer import SERVICE_NAME, InferenceServicer
from inference_service.worker import InferenceWorker, Outcome, WorkItem
from raee.backbone import Backbone
from raee.serving.config import InferenceConfig
from raee.serving.metrics import serve_metrics
from raee.serving.security import bearer_metadata, channel_credentials, open_channel
from raee.serving.server import (
    MAX_MESSAGE_BYTES,
    RunningServer,
    start_server,
    wait_for_shutdown_signal,
)
from raee.v1 import inference_pb2_grpc, retrieval_pb2_grpc

logger = logging.getLogger(__name__)


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

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float) -> None:
        await self.running.stop(grace_s)
        await self.batcher.close()
        self.worker.close()
        await self.channel.close()


async def start(config: InferenceConfig, *, backbone: Backbone | None = None) -> InferenceServer:
    """Start serving at once (NOT_SERVING), load the backbone, then report SERVING."""
    servicer = InferenceServicer(config)
    running = await start_server(
        port=config.port,
        register=lambda server: inference_pb2_grpc.add_InferenceServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        host=config.listen_host,
        security=config.security,
        max_connection_age_s=config.max_connection_age_s,
        max_connection_age_grace_s=config.max_connection_age_grace_s,
    )
    logger.info("inference worker listening on port %d; loading backbone", running.port)
    if backbone is None:
        backbone = await asyncio.to_thread(Backbone.load, config.backbone)
    # dns:/// with round_robin spreads calls over every retrieval pod behind a headless Service;
    # the retrieval pods close connections after RAEE_MAX_CONNECTION_AGE_S, and the
    # re-resolution that follows finds pods added since.
    target = config.retrieval_addr if "://" in config.retrieval_addr else f"dns:///{config.retrieval_addr}"
    credentials = channel_credentials(
        config.retrieval_tls_ca, config.retrieval_tls_cert, config.retrieval_tls_key
    )
    channel = open_channel(
        target,
        credentials,
        [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.service_config", RETRIEVAL_SERVICE_CONFIG),
        ],
    )
    worker = InferenceWorker(
        backbone,
        retrieval_pb2_grpc.RetrievalServiceStub(channel),
        retrieval_timeout_s=config.retrieval_timeout_ms / 1000,
        task_ttl_s=config.task_ttl_s,
        metadata=bearer_metadata(config.retrieval_token),
    )
    batcher: MicroBatcher[WorkItem, Outcome] = MicroBatcher(
        worker.process,
        max_batch=config.max_batch,
        max_wait_s=config.max_wait_ms / 1000,
        max_queue=config.max_queue,
    )
    batcher.start()
    servicer.batcher = batcher
    await running.set_serving(True)
    logger.info("inference worker SERVING %s (retrieval at %s)", backbone.id, config.retrieval_addr)
    return InferenceServer(running, batcher, worker, channel)


async def serve(config: InferenceConfig) -> None:
    serve_metrics(config.metrics_port)
    server = await start(config)
    await wait_for_shutdown_signal()
    await server.stop(config.grace_s)
    logger.info("inference worker stopped")
