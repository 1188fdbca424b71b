"""Sync and async clients of the RAEE inference worker (``raee.v1.InferenceService``).

Only grpcio and protobuf: no torch, no server code. Calls are retried with
exponential backoff and jitter on UNAVAILABLE and RESOURCE_EXHAUSTED only (the
worker is starting, draining or its queue is full); every other status is raised
at once as :class:`RaeeError`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc import aio

from raee_client._v1 import inference_pb2, inference_pb2_grpc, retrieval_pb2

T = TypeVar("T")
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
MODES = {
    "raee": inference_pb2.MODE_RAEE,
    "full": inference_pb2.MODE_FULL,
    "fixed": inference_pb2.MODE_FIXED,
}


class RaeeError(Exception):
    """A call failed: ``code`` is the gRPC status name (``"NOT_FOUND"``), ``message`` the server's."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Result:
    """One text's answer."""

    label: str
    probabilities: tuple[float, ...]
    exit_layer: int
    num_layers: int
    degraded: bool
    task_version: str
    degraded_reason: str = ""
    retrieval_ms: float = 0.0
    forward_ms: float = 0.0


@dataclass(frozen=True)
class ItemError:
    """One text of ``classify_many`` that failed on its own."""

    index: int
    code: str
    message: str


@dataclass(frozen=True)
class Task:
    """A task the worker serves; ``labels`` in probability order."""

    name: str
    version: str
    labels: tuple[str, ...]
    num_layers: int


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        """Full-jitter backoff before each retry."""
        backoff = self.initial_backoff_s
        for _ in range(self.attempts - 1):
            yield random.uniform(0, backoff)
            backoff = min(backoff * self.multiplier, self.max_backoff_s)


def _request(
    task: str, text: str, mode: str, layer: int | None, k: int | None
) -> inference_pb2.ClassifyRequest:
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {sorted(MODES)}")
    return inference_pb2.ClassifyRequest(task=task, text=text, mode=MODES[mode], layer=layer, k=k)


def _result(response: inference_pb2.ClassifyResponse) -> Result:
    return Result(
        label=response.label,
        probabilities=tuple(response.probabilities),
        exit_layer=response.exit_layer,
        num_layers=response.num_layers,
        degraded=response.degraded,
        task_version=response.task_version,
        degraded_reason=response.degraded_reason,
        retrieval_ms=response.retrieval_ms,
        forward_ms=response.forward_ms,
    )


def _task(info: Any) -> Task:
    return Task(info.task, info.version, tuple(label.name for label in info.spec.labels), info.num_layers)


def _chunks(texts: Sequence[str], size: int) -> Iterator[tuple[int, Sequence[str]]]:
    if size < 1:
        raise ValueError("chunk_size: must be at least 1")
    for start in range(0, len(texts), size):
        yield start, texts[start : start + size]


def _batch_results(start: int, response: inference_pb2.ClassifyBatchResponse) -> list[Result | ItemError]:
    out: list[Result | ItemError] = []
    for offset, item in enumerate(response.results):
        if item.HasField("error"):
            code = grpc.StatusCode.UNKNOWN
            for candidate in grpc.StatusCode:
                if candidate.value[0] == item.error.code:
                    code = candidate
            out.append(ItemError(start + offset, code.name, item.error.message))
        else:
            out.append(_result(item.response))
    return out


def _credentials(tls_ca: str) -> grpc.ChannelCredentials | None:
    if not tls_ca:
        return None
    with open(tls_ca, "rb") as handle:
        return grpc.ssl_channel_credentials(root_certificates=handle.read())


class Client:
    """``with Client("localhost:50052") as client: client.classify("sst2", "a fine film")``."""

    def __init__(
        self,
        address: str,
        *,
        token: str = "",
        tls_ca: str = "",
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        credentials = _credentials(tls_ca)
        self._channel = (
            grpc.insecure_channel(address)
            if credentials is None
            else grpc.secure_channel(address, credentials)
        )
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()

    def _call(self, method: Callable[..., T], request: Any) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return method(request, timeout=self.timeout_s, metadata=self._metadata)
            except grpc.RpcError as error:
                code = error.code()
                delay = next(delays, None) if code in RETRYABLE else None
                if delay is None:
                    raise RaeeError(code.name, error.details() or "") from None
                time.sleep(delay)

    def classify(
        self, task: str, text: str, mode: str = "raee", layer: int | None = None, k: int | None = None
    ) -> Result:
        return _result(self._call(self._stub.Classify, _request(task, text, mode, layer, k)))

    def classify_many(
        self,
        task: str,
        texts: Sequence[str],
        mode: str = "raee",
        layer: int | None = None,
        k: int | None = None,
        chunk_size: int = 256,
    ) -> list[Result | ItemError]:
        """One answer per text, in order, in ClassifyBatch calls of ``chunk_size`` texts."""
        out: list[Result | ItemError] = []
        for start, chunk in _chunks(texts, chunk_size):
            request = inference_pb2.ClassifyBatchRequest(
                requests=[_request(task, text, mode, layer, k) for text in chunk]
            )
            out.extend(_batch_results(start, self._call(self._stub.ClassifyBatch, request)))
        return out

    def list_tasks(self) -> list[Task]:
        response = self._call(self._stub.ListTasks, retrieval_pb2.ListTasksRequest())
        return [_task(info) for info in response.tasks]

    def get_task(self, task: str) -> Task:
        return _task(self._call(self._stub.GetTask, retrieval_pb2.GetTaskRequest(task=task)))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient:
    """``async with AsyncClient("localhost:50052") as client: await client.classify(...)``."""

    def __init__(
        self,
        address: str,
        *,
        token: str = "",
        tls_ca: str = "",
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        credentials = _credentials(tls_ca)
        self._channel = (
            aio.insecure_channel(address) if credentials is None else aio.secure_channel(address, credentials)
        )
        self._stub = inference_pb2_grpc.InferenceServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()

    async def _call(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        delays = self.retry.delays()
        while True:
            try:
                return await method(request, timeout=self.timeout_s, metadata=self._metadata)
            except aio.AioRpcError as error:
                code = error.code()
                delay = next(delays, None) if code in RETRYABLE else None
                if delay is None:
                    raise RaeeError(code.name, error.details() or "") from None
                await asyncio.sleep(delay)

    async def classify(
        self, task: str, text: str, mode: str = "raee", layer: int | None = None, k: int | None = None
    ) -> Result:
        return _result(await self._call(self._stub.Classify, _request(task, text, mode, layer, k)))

    async def classify_many(
        self,
        task: str,
        texts: Sequence[str],
        mode: str = "raee",
        layer: int | None = None,
        k: int | None = None,
        chunk_size: int = 256,
    ) -> list[Result | ItemError]:
        """One answer per text, in order; the ClassifyBatch calls of ``chunk_size`` texts run concurrently."""

        async def one(start: int, chunk: Sequence[str]) -> list[Result | ItemError]:
            request = inference_pb2.ClassifyBatchRequest(
                requests=[_request(task, text, mode, layer, k) for text in chunk]
            )
            return _batch_results(start, await self._call(self._stub.ClassifyBatch, request))

        parts = await asyncio.gather(*(one(start, chunk) for start, chunk in _chunks(texts, chunk_size)))
        return [item for part in parts for item in part]

    async def list_tasks(self) -> list[Task]:
        response = await self._call(self._stub.ListTasks, retrieval_pb2.ListTasksRequest())
        return [_task(info) for info in response.tasks]

    async def get_task(self, task: str) -> Task:
        return _task(await self._call(self._stub.GetTask, retrieval_pb2.GetTaskRequest(task=task)))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
