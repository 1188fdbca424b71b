"""Server interceptors: domain errors to status codes, undecodable bodies, and request metrics.

Every unary call is counted in ``raee_grpc_request_seconds`` with the status it
really ended with: OK, the mapped error, INVALID_ARGUMENT for a body that is not
a valid message (decoded here, never by gRPC's own code, so no traceback per
call), and CANCELLED when the caller went away.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from raee.serving.errors import status_of
from raee.serving.metrics import REJECTED, REQUEST_SECONDS

logger = logging.getLogger(__name__)

Handler = Callable[[Any, aio.ServicerContext], Awaitable[Any]]
UNDECODABLE_MESSAGE = "request: the body is not a valid protobuf message for this method"


class Undecodable:
    """What the request deserializer returns for bytes that do not parse: the handler refuses it."""

    __slots__ = ()


UNDECODABLE = Undecodable()


class RateLimitedLog:
    """Logs at most one warning per ``every_s`` per key, with the count of the ones held back."""

    def __init__(self, log: logging.Logger, every_s: float = 10.0) -> None:
        self._log = log
        self._every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self._every_s) < self._every_s:
                self._held[key] = self._held.get(key, 0) + 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        suffix = f" ({held} more like it in the last {self._every_s:.0f} s)" if held else ""
        self._log.warning(message + suffix, *args)


REFUSALS_LOG = RateLimitedLog(logger)


def safe_deserializer(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserialize`` that returns :data:`UNDECODABLE` instead of raising."""
    if deserialize is None:
        return None

    def decode(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception:
            return UNDECODABLE

    return decode


def method_name(details: grpc.HandlerCallDetails) -> str:
    return str(details.method).rsplit("/", 1)[-1]


class ErrorMappingInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Turns exceptions raised by servicers into statuses (``errors.status_of``) and times requests."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, method_name(details)),
            request_deserializer=safe_deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _wrap(inner: Handler, method: str) -> Handler:
    async def handle(request: Any, context: aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Undecodable):
                code = grpc.StatusCode.INVALID_ARGUMENT
                REJECTED.labels(method, "undecodable").inc()
                REFUSALS_LOG.warning(
                    f"undecodable:{method}", "%s: refused an undecodable request body", method
                )
                await context.abort(code, UNDECODABLE_MESSAGE)
            return await inner(request, context)
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED  # the caller went away (or its deadline passed)
            raise
        except Exception as error:
            code, message = status_of(error)
            if code is grpc.StatusCode.INTERNAL:
                logger.exception("%s failed", method)
            await context.abort(code, message)
        finally:
            REQUEST_SECONDS.labels(method, code.name).observe(time.perf_counter() - started)

    return handle
