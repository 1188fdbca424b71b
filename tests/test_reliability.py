"""Faults under load, and backpressure: the worker keeps answering and recovers by itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, inference_pb2_grpc
from raee_cli.client import InferenceClient
from retrieval_service import server as retrieval_server
from tests.conftest import start_demo_pair

SENTENCES = [f"review {i}: the film was {'great' if i % 2 else 'awful'} ." for i in range(16)]


async def test_retrieval_killed_under_load_then_back(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    pair = await start_demo_pair(served_home, gemma, encoder, retrieval_timeout_ms=500.0)
    retrieval_config = pair.retrieval.servicer.settings.model_copy(update={"port": pair.retrieval.port})
    phase = "before"
    seen: dict[str, list[bool]] = {"before": [], "down": [], "after": []}
    failures: list[BaseException] = []
    stop = asyncio.Event()

    async def client_loop(index: int) -> None:
        async with InferenceClient(pair.inference_address, timeout_s=60) as client:
            while not stop.is_set():
                try:
                    answer = await client.classify(demo_spec.name, SENTENCES[index])
                except grpc.aio.AioRpcError as error:
                    failures.append(error)
                    continue
                seen[phase].append(answer.degraded)

    clients = [asyncio.ensure_future(client_loop(i)) for i in range(16)]
    try:
        await asyncio.sleep(3)
        phase = "down"
        await pair.retrieval.stop(0)
        await asyncio.sleep(4)
        restarted = await retrieval_server.start(retrieval_config, encoder=encoder)
        pair.retrieval = restarted
        await asyncio.sleep(2)  # the worker's channel reconnects by itself
        phase = "after"
        await asyncio.sleep(4)
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await pair.stop()
    assert failures == []
    assert seen["before"] and not any(seen["before"])
    assert seen["down"] and any(seen["down"]), "requests during the outage were answered degraded"
    assert seen["after"][-16:] and not any(seen["after"][-16:]), "recovered once retrieval came back"


async def test_full_queue_is_resource_exhausted_not_unbounded(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    pair = await start_demo_pair(served_home, gemma, encoder, max_batch=1, max_queue=2, max_wait_ms=0.0)
    try:
        async with InferenceClient(pair.inference_address, timeout_s=120) as client:
            results = await asyncio.gather(
                *(client.classify(demo_spec.name, text) for text in SENTENCES * 3), return_exceptions=True
            )
    finally:
        await pair.stop()
    codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    refused = next(r for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert "queue is full" in (refused.details() or "")


async def test_calls_without_a_deadline_get_the_default(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    pair = await start_demo_pair(served_home, gemma, encoder, default_deadline_s=0.001)
    try:
        async with grpc.aio.insecure_channel(pair.inference_address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Classify(
                    inference_pb2.ClassifyRequest(task=demo_spec.name, text="no deadline set")
                )
    finally:
        await pair.stop()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_shutdown_drops_no_admitted_call_with_64_queued_full_calls(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    """A short grace period: the worker admits only what it can drain; the rest is refused up front."""
    grace_s = 1.5
    pair = await start_demo_pair(served_home, gemma, encoder, grace_s=grace_s)
    try:
        async with InferenceClient(pair.inference_address, timeout_s=60) as client:
            for i in range(3):  # measured batch times feed the admission estimate
                await client.classify(demo_spec.name, f"warm up {i}", "full")
            calls = [
                asyncio.ensure_future(
                    client.classify(demo_spec.name, f"queued sentence {i} was fine", "full")
                )
                for i in range(64)
            ]
            await asyncio.sleep(0.3)
            await pair.inference.stop(grace_s)
            results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        await pair.retrieval.stop(0)
    codes = [r.code() if isinstance(r, grpc.aio.AioRpcError) else grpc.StatusCode.OK for r in results]
    assert not [
        r for r in results if not isinstance(r, grpc.aio.AioRpcError | inference_pb2.ClassifyResponse)
    ]
    # Every admitted call was answered; the others were refused before queueing, never dropped.
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    assert codes.count(grpc.StatusCode.OK) >= 1
