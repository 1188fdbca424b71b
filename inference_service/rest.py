"""The worker's REST port: KServe's Open Inference Protocol (v2) over HTTP, and ``POST /v1/classify``.

One Starlette app served by uvicorn in the worker's own event loop, beside the gRPC
server, so both reach the same micro-batcher. The bearer token and TLS files are
the gRPC port's: the health routes stay open (probes), everything else needs the
token when one is set. Bodies over ``MAX_MESSAGE_BYTES`` (the gRPC limit) are 413;
bad JSON and bad tensors are 400 with a message naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import ssl
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inference_service.oip_servicer import OipRunner
from raee.errors import InvalidArgumentError, UpstreamUnavailableError
from raee.serving.server import MAX_MESSAGE_BYTES
from raee.wire import oip, rest

logger = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
OPEN_PATHS = ("/v2/health/",)


class BodyTooLargeError(Exception):
    pass


def build_app(runner: OipRunner) -> Starlette:
    settings = runner.settings
    token = settings.auth_token.get_secret_value()
    expected = f"Bearer {token}".encode()

    async def guarded(request: Request, handler: Any) -> Response:
        if token and not request.url.path.startswith(OPEN_PATHS):
            supplied = request.headers.get("authorization", "")
            if not hmac.compare_digest(supplied.encode(), expected):
                return JSONResponse(
                    {"error": "a valid 'authorization: Bearer <token>' header is required"}, 401
                )
        try:
            response: Response = await handler(request)
        except BodyTooLargeError:
            return JSONResponse({"error": f"body: larger than the limit of {MAX_MESSAGE_BYTES} bytes"}, 413)
        except Exception as error:
            status, body = rest.http_error(error)
            if status == 500:
                logger.exception("%s failed", request.url.path)
            return JSONResponse(body, status)
        return response

    def route(path: str, handler: Any, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handler)

        return Route(path, endpoint, methods=methods)

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        return JSONResponse({"ready": runner.ready}, 200 if runner.ready else 503)

    async def server_metadata(request: Request) -> Response:
        return JSONResponse(
            {"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION, "extensions": ["binary_tensor_data"]}
        )

    async def model_ready(request: Request) -> Response:
        name, version = request.path_params["task"], request.path_params.get("version", "")
        is_ready = runner.ready and await runner.model_ready(name, version)
        return JSONResponse({"name": name, "ready": is_ready}, 200 if is_ready else 400)

    async def model_metadata(request: Request) -> Response:
        name = request.path_params["task"]
        version, labels = await runner.labels(name, request.path_params.get("version", ""))
        return JSONResponse(oip.json_metadata(name, version, labels))

    async def infer(request: Request) -> Response:
        body = await _read_body(request)
        header = request.headers.get(HEADER_LENGTH)
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise InvalidArgumentError(HEADER_LENGTH, "must be an integer") from None
        call, binary = oip.json_call(
            request.path_params["task"],
            request.path_params.get("version", ""),
            body,
            header_length,
            max_text_chars=settings.max_text_chars,
            max_items=settings.max_batch_requests,
        )
        version, tensors = await runner.infer(call, settings.default_deadline_s)
        content, length = oip.json_response(call, version, tensors, binary)
        if length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(length)})

    async def classify(request: Request) -> Response:
        items = rest.classify_items(
            await _read_body(request),
            max_text_chars=settings.max_text_chars,
            max_items=settings.max_batch_requests,
        )
        if runner.batcher is None:
            raise UpstreamUnavailableError("the inference worker is still loading its backbone")
        batcher = runner.batcher
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(batcher.submit(item) for item in items)), settings.default_deadline_s
        )
        return JSONResponse(rest.classify_json(outcomes))

    model = "/v2/models/{task}"
    versioned = "/v2/models/{task}/versions/{version}"
    routes = [
        route("/v2/health/live", live, ["GET"]),
        route("/v2/health/ready", ready, ["GET"]),
        route("/v2", server_metadata, ["GET"]),
        *(route(f"{base}/ready", model_ready, ["GET"]) for base in (model, versioned)),
        *(route(base, model_metadata, ["GET"]) for base in (model, versioned)),
        *(route(f"{base}/infer", infer, ["POST"]) for base in (model, versioned)),
        route("/v1/classify", classify, ["POST"]),
    ]
    return Starlette(routes=routes)


async def _read_body(request: Request) -> bytes:
    """The body, refused as soon as it is known to exceed the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_MESSAGE_BYTES:
        raise BodyTooLargeError
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_MESSAGE_BYTES:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the worker's lifecycle owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RestServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    async def stop(self, grace_s: float) -> None:
        self.server.should_exit = True
        try:
            await asyncio.wait_for(self.task, grace_s + 1)
        except TimeoutError:
            self.task.cancel()


async def start_rest(runner: OipRunner) -> RestServer | None:
    """Serve the REST app on ``http_port`` (0: a free port; -1: no REST port)."""
    settings = runner.settings
    if settings.http_port < 0:
        return None
    family = socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it Nagle's algorithm held small responses back until the client's delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((settings.http_host, settings.http_port))
    except OSError:
        sock.close()
        raise OSError(f"http_port: cannot bind {settings.http_host}:{settings.http_port}") from None
    config = uvicorn.Config(
        build_app(runner),
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=settings.tls_cert or None,
        ssl_keyfile=settings.tls_key or None,
        ssl_ca_certs=settings.tls_client_ca or None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if settings.tls_client_ca else ssl.CERT_NONE,
        timeout_graceful_shutdown=int(settings.grace_s),
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]), name="rest")
    while not server.started:
        if task.done():
            task.result()
            raise OSError("http_port: the REST server stopped while starting")
        await asyncio.sleep(0.01)
    port = int(sock.getsockname()[1])
    logger.info("REST (OIP v2 HTTP, /v1/classify) on port %d", port)
    return RestServer(server, task, port)
