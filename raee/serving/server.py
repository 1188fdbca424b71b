"""The lifecycle both services share: a grpc.aio server with health, reflection and metrics.

The server starts before the models load, reporting NOT_SERVING on the health
service, and flips to SERVING once they are in memory; on SIGTERM or SIGINT it
reports NOT_SERVING, refuses new calls and lets in-flight calls finish within
the grace period (as in the grpc/grpc examples).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from raee.serving import tracing
from raee.serving.interceptors import ErrorMappingInterceptor
from raee.serving.security import BearerTokenInterceptor, ServerSecurity, server_credentials

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.so_reuseport", 0),
]


def connection_age_options(age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """gRPC server options closing connections after ``age_s`` (0: never), ``grace_s`` for calls in flight."""
    if age_s < 0:
        raise ValueError(f"max_connection_age_s: must be 0 (never) or positive (got {age_s})")
    if grace_s < 0:
        raise ValueError(f"max_connection_age_grace_s: must be 0 or positive (got {grace_s})")
    if age_s == 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", round(grace_s * 1000)),
    ]


@dataclass
class RunningServer:
    server: aio.Server
    health: health.aio.HealthServicer
    port: int
    service_names: Sequence[str]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_server(
    *,
    port: int,
    register: Callable[[aio.Server], None],
    service_names: Sequence[str],
    host: str = "[::]",
    security: ServerSecurity | None = None,
    max_connection_age_s: float = 0.0,
    max_connection_age_grace_s: float = 0.0,
) -> RunningServer:
    """Start serving ``register``'s servicers plus health and reflection; port 0 picks a free one.

    With ``max_connection_age_s``, every connection is closed after about that long
    (GOAWAY, after which the client reconnects and re-resolves the name), so that
    clients spread over pods added since they connected.
    """
    security = security or ServerSecurity()
    interceptors = [BearerTokenInterceptor(security.auth_token)] if security.auth_token else []
    server = aio.server(
        interceptors=[*tracing.server_interceptors(), *interceptors, ErrorMappingInterceptor()],
        options=SERVER_OPTIONS + connection_age_options(max_connection_age_s, max_connection_age_grace_s),
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    credentials = server_credentials(security.tls_cert, security.tls_key, security.tls_client_ca)
    address = f"{host}:{port}"
    bound = (
        server.add_insecure_port(address)
        if credentials is None
        else server.add_secure_port(address, credentials)
    )
    if bound == 0:
        raise OSError(f"port: cannot bind {host}:{port}")
    await server.start()
    running = RunningServer(server, health_servicer, bound, service_names)
    await running.set_serving(False)
    return running


async def wait_for_shutdown_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("shutdown signal received; draining")
