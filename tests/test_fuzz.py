"""Hypothesis-driven requests against both live services: any status but INTERNAL/UNKNOWN.

CI runs a few hundred requests per service; ``RAEE_FUZZ_EXAMPLES=5000`` runs the
long campaign (docs/reliability.md), which also reports the process's memory growth.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import resource

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, inference_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from raee_cli.pair import ServicePair
from tests.wire_bodies import bodies

EXAMPLES = int(os.environ.get("RAEE_FUZZ_EXAMPLES", "150"))
BROKEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 150,  # CI: the same cases every run; long campaigns explore
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

tasks = st.one_of(
    st.just("demo-sentiment"),
    st.just(""),
    st.sampled_from(["unknown", "UPPER", "../etc", "a" * 300]),
    st.text(max_size=40),
)
texts = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=50),  # control characters
    st.builds(lambda n, c: c * n, st.integers(0, 20_000), st.sampled_from(["x", "é", "🙂", " ", "\x00"])),
)
int32 = st.integers(-(2**31), 2**31 - 1)
maybe_int32 = st.one_of(st.none(), int32, st.integers(-3, 20))
floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def call(method: object, request: object) -> grpc.StatusCode:
    try:
        await method(request, timeout=60)  # type: ignore[operator]
    except grpc.aio.AioRpcError as error:
        assert error.code() not in BROKEN, (request, error.code(), error.details())  # noqa: PT017
        return error.code()
    return grpc.StatusCode.OK


# Async fixtures: a grpc.aio channel must be made inside the running loop (a sync fixture
# finds no current loop once an earlier test's asyncio.run() has closed its own).
@pytest.fixture(scope="module")
async def inference_stub(pair: ServicePair) -> inference_pb2_grpc.InferenceServiceStub:
    return inference_pb2_grpc.InferenceServiceStub(grpc.aio.insecure_channel(pair.inference_address))


@pytest.fixture(scope="module")
async def retrieval_stub(pair: ServicePair) -> retrieval_pb2_grpc.RetrievalServiceStub:
    return retrieval_pb2_grpc.RetrievalServiceStub(grpc.aio.insecure_channel(pair.retrieval_address))


@FUZZ
@given(task=tasks, text=texts, mode=st.integers(-3, 8), layer=maybe_int32, k=maybe_int32, flag=st.booleans())
async def test_fuzz_classify(
    inference_stub: inference_pb2_grpc.InferenceServiceStub,
    demo_spec: TaskSpec,
    task: str,
    text: str,
    mode: int,
    layer: int | None,
    k: int | None,
    flag: bool,
) -> None:
    request = inference_pb2.ClassifyRequest(
        task=task,
        text=text,
        mode=mode,
        layer=layer,
        k=k,
        include_distribution=flag,  # type: ignore[arg-type]
    )
    code = await call(inference_stub.Classify, request)
    batch = inference_pb2.ClassifyBatchRequest(requests=[request] * (1 + len(text) % 3))
    assert await call(inference_stub.ClassifyBatch, batch) in (
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    if code is grpc.StatusCode.OK:
        answer = await inference_stub.Classify(request, timeout=60)
        assert answer.label in demo_spec.label_names
        assert 0 <= answer.exit_layer <= answer.num_layers == 18
        assert sum(answer.probabilities) == pytest.approx(1.0, abs=1e-4)


@FUZZ
@given(
    task=tasks,
    text=st.one_of(st.none(), texts),
    embedding=st.one_of(
        st.none(), st.lists(floats, max_size=400), st.lists(floats, min_size=384, max_size=384)
    ),
    k=maybe_int32,
    neighbours=st.booleans(),
    batch=st.integers(0, 3),
)
async def test_fuzz_retrieval(
    retrieval_stub: retrieval_pb2_grpc.RetrievalServiceStub,
    task: str,
    text: str | None,
    embedding: list[float] | None,
    k: int | None,
    neighbours: bool,
    batch: int,
) -> None:
    request = retrieval_pb2.ExitDistributionRequest(task=task, k=k, include_neighbours=neighbours)  # type: ignore[arg-type]
    if embedding is not None:
        request.embedding.values.extend(embedding)
    elif text is not None:
        request.text = text
    await call(retrieval_stub.GetExitDistribution, request)
    await call(
        retrieval_stub.BatchGetExitDistribution,
        retrieval_pb2.BatchExitDistributionRequest(requests=[request] * batch),
    )
    await call(retrieval_stub.GetTask, retrieval_pb2.GetTaskRequest(task=task))


WIRE_REQUESTS = int(os.environ.get("RAEE_WIRE_FUZZ_REQUESTS", "300"))


def metric_codes() -> collections.Counter[str]:
    by_code: collections.Counter[str] = collections.Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "raee_grpc_request_seconds_count":
                by_code[sample.labels["code"]] += int(sample.value)
    return by_code


async def test_wire_fuzz_raw_bytes_to_every_method(pair: ServicePair, demo_spec: TaskSpec) -> None:
    """Random and mutated bytes, sent raw to all six methods: never UNKNOWN or INTERNAL."""
    before = metric_codes()
    sent = bodies(random.Random(13), demo_spec.name, WIRE_REQUESTS)
    channels = {
        "raee.v1.InferenceService": grpc.aio.insecure_channel(pair.inference_address),
        "raee.v1.RetrievalService": grpc.aio.insecure_channel(pair.retrieval_address),
    }
    seen: collections.Counter[str] = collections.Counter()
    limit = asyncio.Semaphore(8)

    async def send(method: str, body: bytes) -> None:
        channel = channels[method.split("/")[1]]
        async with limit:
            try:
                await channel.unary_unary(method)(body, timeout=60)
                seen["OK"] += 1
            except grpc.aio.AioRpcError as error:
                assert error.code() not in BROKEN, (method, body[:64], error.details())  # noqa: PT017
                seen[error.code().name] += 1

    try:
        await asyncio.gather(*(send(method, body) for method, body in sent))
    finally:
        for channel in channels.values():
            await channel.close()
    after = metric_codes()
    assert sum(seen.values()) == len(sent)
    assert after["UNKNOWN"] == before["UNKNOWN"] and after["INTERNAL"] == before["INTERNAL"]
    assert seen["INVALID_ARGUMENT"] > 0 and seen["OK"] > 0


async def test_services_survive_the_fuzzing(pair: ServicePair, demo_spec: TaskSpec) -> None:
    """Runs after the fuzz tests in this module: both services still answer correctly."""
    before = rss_mb()
    stub = inference_pb2_grpc.InferenceServiceStub(grpc.aio.insecure_channel(pair.inference_address))
    answers = await asyncio.gather(
        *(
            stub.Classify(
                inference_pb2.ClassifyRequest(task=demo_spec.name, text=f"a fine film {i}"), timeout=60
            )
            for i in range(16)
        )
    )
    assert all(a.label in demo_spec.label_names for a in answers)
    by_code = metric_codes()
    assert by_code["INTERNAL"] == 0
    assert by_code["UNKNOWN"] == 0
    total = sum(by_code.values())
    print(f"\nfuzz: {total} requests in this process, by status {dict(by_code)}; max RSS {before:.0f} MB")
