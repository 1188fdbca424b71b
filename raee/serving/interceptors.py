"""Server interceptors: domain errors to status codes, and request metrics."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from raee.serving.errors import status_of
from raee.serving.metrics import REQUEST_SECONDS

logger = logging.getLogger(__name__)

Handler = Callable[[Any, aio.ServicerContext], Awaitable[Any]]


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
        method = details.method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(
            _wrap(handler.unary_unary, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _wrap(inner: Handler, method: str) -> Handler:
    async def handle(request: Any, context: aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await inner(request, context)
        except aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as error:
            code, message = status_of(error)
            if code is grpc.StatusCode.INTERNAL:
                logger.exception("%s failed", method)
            await context.abort(code, message)
        finally:
            REQUEST_SECONDS.labels(method, code.name).observe(time.perf_counter() - started)

    return handle
