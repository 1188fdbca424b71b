"""Bad input over gRPC, each refused by name with a bounded message (issue 13, items 3-5, 10-12).

Real services on localhost with the real models and the embedded store.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, retrieval_pb2
from raee_cli.pair import ServicePair
from tests.conftest import requests_counted, start_demo_pair

INFERENCE_METHODS = ["Classify", "ClassifyBatch"]
RETRIEVAL_METHODS = ["GetExitDistribution", "BatchGetExitDistribution", "ListTasks", "GetTask"]
GARBAGE = [b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x05abc", bytes(range(256)), b"\x08\x80"]


async def raw_call(channel: grpc.aio.Channel, path: str, body: bytes) -> grpc.aio.AioRpcError | bytes:
    call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
    try:
        return await call(body, timeout=30)
    except grpc.aio.AioRpcError as error:
        return error


async def test_undecodable_bodies_are_invalid_argument_without_tracebacks(
    pair: ServicePair, caplog: pytest.LogCaptureFixture
) -> None:
    targets = [(pair.inference_address, "raee.v1.InferenceService", m) for m in INFERENCE_METHODS] + [
        (pair.retrieval_address, "raee.v1.RetrievalService", m) for m in RETRIEVAL_METHODS
    ]
    caplog.set_level(logging.WARNING)
    for address, service, method in targets:
        before = requests_counted(method, "INVALID_ARGUMENT")
        async with grpc.aio.insecure_channel(address) as channel:
            for body in GARBAGE:
                answer = await raw_call(channel, f"/{service}/{method}", body)
                assert isinstance(answer, grpc.aio.AioRpcError), (method, body)
                assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, answer.code())
                details = answer.details() or ""
                assert details.startswith("request:"), details
                assert "Error" not in details and "Exception" not in details  # no internal type names
        for _ in range(100):  # the handler counts the call just after the client has its reply
            if requests_counted(method, "INVALID_ARGUMENT") - before >= len(GARBAGE):
                break
            await asyncio.sleep(0.05)
        assert requests_counted(method, "INVALID_ARGUMENT") - before == len(GARBAGE)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a traceback was logged"
    # Logged, but rate-limited: far fewer warnings than refused calls.
    warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert 1 <= len(warnings) < len(targets) * len(GARBAGE)


async def test_long_task_names_are_never_echoed(pair: ServicePair) -> None:
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        classify = channel.unary_unary(
            "/raee.v1.InferenceService/Classify",
            request_serializer=inference_pb2.ClassifyRequest.SerializeToString,
            response_deserializer=inference_pb2.ClassifyResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await classify(inference_pb2.ClassifyRequest(task="t" * 40_000, text="hi"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert len(caught.value.details() or "") < 300
        batch = channel.unary_unary(
            "/raee.v1.InferenceService/ClassifyBatch",
            request_serializer=inference_pb2.ClassifyBatchRequest.SerializeToString,
            response_deserializer=inference_pb2.ClassifyBatchResponse.FromString,
        )
        # 1024 names of 12 KB each (12 MiB, under the 16 MiB message limit): every item
        # is refused alone, and the reply stays small.
        request = inference_pb2.ClassifyBatchRequest(
            requests=[
                inference_pb2.ClassifyRequest(task=f"{i}" + "N" * 12_000, text="x") for i in range(1024)
            ]
        )
        answer = await batch(request, timeout=60)
    assert len(answer.results) == 1024
    for result in answer.results:
        assert result.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert result.error.message.startswith("task:")
        assert len(result.error.message) < 300
    assert answer.ByteSize() < 1024 * 300


async def test_batch_exit_distribution_reports_a_bad_task_name_per_item(pair: ServicePair) -> None:
    from raee.v1 import retrieval_pb2_grpc

    async with grpc.aio.insecure_channel(pair.retrieval_address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        answer = await stub.BatchGetExitDistribution(
            retrieval_pb2.BatchExitDistributionRequest(
                requests=[
                    retrieval_pb2.ExitDistributionRequest(task="demo-sentiment", text="a fine film"),
                    retrieval_pb2.ExitDistributionRequest(task="Not A Name!" * 1000, text="a fine film"),
                    retrieval_pb2.ExitDistributionRequest(task="demo-sentiment", text="a fine film", k=0),
                ]
            ),
            timeout=30,
        )
    good, bad_name, bad_k = answer.results
    assert good.HasField("response")
    assert bad_name.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert bad_name.error.message.startswith("task:") and len(bad_name.error.message) < 300
    assert bad_k.error.message.startswith("k:")


async def test_huge_embeddings_are_searched_or_refused_by_name(
    pair: ServicePair, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    from raee.v1 import retrieval_pb2_grpc

    unit = encoder.encode([demo_spec.key_text("a moving , beautiful film")])[0].astype(np.float64)
    huge = (unit / np.abs(unit).max() * 3e38).astype(np.float32)  # finite float32, norm overflows float32
    assert np.all(np.isfinite(huge))

    def request(values: np.ndarray) -> retrieval_pb2.ExitDistributionRequest:
        message = retrieval_pb2.ExitDistributionRequest(task="demo-sentiment", include_neighbours=True)
        message.embedding.values.extend(values.tolist())
        return message

    async with grpc.aio.insecure_channel(pair.retrieval_address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        reference = await stub.GetExitDistribution(request(unit.astype(np.float32)), timeout=30)
        scaled = await stub.GetExitDistribution(request(huge), timeout=30)
        assert [n.id for n in scaled.neighbours] == [n.id for n in reference.neighbours]
        assert scaled.neighbours[0].similarity == pytest.approx(reference.neighbours[0].similarity, abs=1e-4)
        assert scaled.neighbours[0].similarity > 0.5
        for bad in (
            np.full(384, np.inf, np.float32),
            np.full(384, np.nan, np.float32),
            np.zeros(384, np.float32),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetExitDistribution(request(bad), timeout=30)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (caught.value.details() or "").startswith("embedding:")


async def test_cancelled_calls_are_counted_as_cancelled(
    pair: ServicePair, demo_spec: TaskSpec, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    before = requests_counted("ClassifyBatch", "CANCELLED")
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        batch = channel.unary_unary(
            "/raee.v1.InferenceService/ClassifyBatch",
            request_serializer=inference_pb2.ClassifyBatchRequest.SerializeToString,
            response_deserializer=inference_pb2.ClassifyBatchResponse.FromString,
        )
        request = inference_pb2.ClassifyBatchRequest(
            requests=[
                inference_pb2.ClassifyRequest(
                    task=demo_spec.name, text=f"film number {i}", mode=inference_pb2.MODE_FULL
                )
                for i in range(256)
            ]
        )
        call = batch(request, timeout=60)
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(100):  # the server notices the cancellation asynchronously
            if requests_counted("ClassifyBatch", "CANCELLED") > before:
                break
            await asyncio.sleep(0.1)
    assert requests_counted("ClassifyBatch", "CANCELLED") == before + 1
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


@pytest.fixture
async def damaged_pair(
    served_home: Path, tmp_path: Path, gemma: Backbone, encoder: QueryEncoder
) -> AsyncIterator[ServicePair]:
    """A copy of the demo store with a second, healthy task; the demo task's manifest is garbage."""
    home = tmp_path / "home"
    shutil.copytree(served_home, home)
    tasks = home / "tasks"
    shutil.copytree(tasks / "demo-sentiment", tasks / "healthy")
    manifest = json.loads((tasks / "healthy" / "CURRENT.json").read_text())
    (tasks / "healthy" / "CURRENT.json").write_text(json.dumps({**manifest, "task": "healthy"}))
    (tasks / "demo-sentiment" / "CURRENT.json").write_text('{"task": "demo-sentiment", "vers')
    started = await start_demo_pair(home, gemma, encoder)
    yield started
    await started.stop()


async def test_a_damaged_store_is_failed_precondition_naming_the_task(damaged_pair: ServicePair) -> None:
    from raee.v1 import inference_pb2_grpc, retrieval_pb2_grpc

    async with (
        grpc.aio.insecure_channel(damaged_pair.retrieval_address) as r_channel,
        grpc.aio.insecure_channel(damaged_pair.inference_address) as i_channel,
    ):
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(r_channel)
        inference = inference_pb2_grpc.InferenceServiceStub(i_channel)
        listed = await retrieval.ListTasks(retrieval_pb2.ListTasksRequest(), timeout=30)
        assert [t.task for t in listed.tasks] == ["healthy"]
        calls = [
            retrieval.GetTask(retrieval_pb2.GetTaskRequest(task="demo-sentiment"), timeout=30),
            retrieval.GetExitDistribution(
                retrieval_pb2.ExitDistributionRequest(task="demo-sentiment", text="fine"), timeout=30
            ),
            inference.Classify(inference_pb2.ClassifyRequest(task="demo-sentiment", text="fine"), timeout=30),
        ]
        for pending in calls:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await pending
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "task 'demo-sentiment'" in (caught.value.details() or "")
        healthy = await inference.Classify(
            inference_pb2.ClassifyRequest(task="healthy", text="fine"), timeout=60
        )
        assert not healthy.degraded
