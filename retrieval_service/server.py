"""Run the retrieval service: ``raee serve retrieval``."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from raee.encoder import QueryEncoder
from raee.serving.config import RetrievalConfig
from raee.serving.metrics import serve_metrics
from raee.serving.server import RunningServer, start_server, wait_for_shutdown_signal
from raee.store import ExitStore, open_store
from raee.v1 import retrieval_pb2_grpc
from retrieval_service.engine import RetrievalEngine
from retrieval_service.servicer import SERVICE_NAME, RetrievalServicer

logger = logging.getLogger(__name__)


@dataclass
class RetrievalServer:
    running: RunningServer
    servicer: RetrievalServicer
    store: ExitStore

    @property
    def port(self) -> int:
        return self.running.port

    async def stop(self, grace_s: float) -> None:
        await self.running.stop(grace_s)
        self.servicer.close()
        self.store.close()


async def start(config: RetrievalConfig, *, encoder: QueryEncoder | None = None) -> RetrievalServer:
    """Start serving at once (NOT_SERVING), load the encoder and store, then report SERVING."""
    servicer = RetrievalServicer(config)
    running = await start_server(
        port=config.port,
        register=lambda server: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        host=config.listen_host,
        security=config.security,
        max_connection_age_s=config.max_connection_age_s,
        max_connection_age_grace_s=config.max_connection_age_grace_s,
    )
    logger.info("retrieval service listening on port %d; loading models", running.port)
    store = open_store(config.store_url or None, home=config.home)
    if encoder is None:
        encoder = await asyncio.to_thread(QueryEncoder, config.encoder)
    servicer.engine = RetrievalEngine(store, encoder)
    await running.set_serving(True)
    logger.info("retrieval service SERVING (store %s, encoder %s)", store.location, encoder.id)
    return RetrievalServer(running, servicer, store)


async def serve(config: RetrievalConfig) -> None:
    serve_metrics(config.metrics_port)
    server = await start(config)
    await wait_for_shutdown_signal()
    await server.stop(config.grace_s)
    logger.info("retrieval service stopped")
