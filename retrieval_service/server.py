"""Run the retrieval service: ``raee serve retrieval``."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from raee.defaults import EncoderSpin
from raee.encoder import QueryEncoder
from raee.serving import tracing
from raee.serving.metrics import serve_metrics_of
from raee.serving.security import ServerSecurity
from raee.serving.server import RunningServer, start_server, wait_for_shutdown_signal
from raee.settings import RetrievalSettings, TracingSettings, load
from raee.store import ExitStore, open_store_from
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


async def start(
    settings: RetrievalSettings, *, encoder: QueryEncoder | None = None, beside_backbone: bool = False
) -> RetrievalServer:
    """Start serving at once (NOT_SERVING), load the encoder and store, then report SERVING.

    ``beside_backbone``: this process also runs the backbone (``raee up``), so the encoder
    it loads spins its threads for a lone query only, whatever ``RAEE_ENCODER_SPIN`` says.
    """
    servicer = RetrievalServicer(settings)
    running = await start_server(
        port=settings.port,
        register=lambda server: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        service_names=[SERVICE_NAME],
        host=settings.listen_host,
        security=ServerSecurity.of(settings),
        max_connection_age_s=settings.max_connection_age_s,
        max_connection_age_grace_s=settings.max_connection_age_grace_s,
    )
    logger.info("retrieval service listening on port %d; loading models", running.port)
    store = open_store_from(settings)
    if encoder is None:
        spin: EncoderSpin = "lone" if beside_backbone else "always" if settings.encoder_spin else "never"
        encoder = await asyncio.to_thread(
            QueryEncoder, settings.encoder, runtime=settings.encoder_runtime, spin=spin
        )
    servicer.engine = RetrievalEngine(store, encoder)
    started = time.perf_counter()
    await asyncio.to_thread(encoder.encode, ["warm-up: one encoder pass before SERVING"])
    logger.info("warm-up: one encoder pass in %.3f s", time.perf_counter() - started)
    await running.set_serving(True)
    logger.info("retrieval service SERVING (store %s, encoder %s)", store.location, encoder.id)
    return RetrievalServer(running, servicer, store)


async def serve(settings: RetrievalSettings) -> None:
    serve_metrics_of(settings, settings.metrics_port)
    tracing.setup("raee-retrieval", load(TracingSettings))
    server = await start(settings)
    await wait_for_shutdown_signal()
    await server.stop(settings.grace_s)
    logger.info("retrieval service stopped")
