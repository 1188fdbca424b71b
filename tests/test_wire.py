"""raee.wire: explicit enum maps that round-trip the generated enums, and request validation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest

from raee.encoder import QueryEncoder
from raee.errors import InvalidArgumentError, InvalidTaskNameError, RemoteError
from raee.exit_rule import Fallback
from raee.serving.errors import status_of
from raee.settings import RetrievalSettings
from raee.v1 import inference_pb2, retrieval_pb2, retrieval_pb2_grpc
from raee.wire.inference import MODE_FROM_WIRE, MODE_TO_WIRE, Mode, classify_request, work_item
from raee.wire.retrieval import (
    FALLBACK_FROM_WIRE,
    FALLBACK_TO_WIRE,
    QueryLimits,
    exit_plan,
    exit_query,
)
from retrieval_service import server as retrieval_server
from tests.conftest import requests_counted

LIMITS = QueryLimits(default_k=12, max_k=64, max_text_chars=100)


def test_modes_round_trip_the_generated_enum() -> None:
    generated = set(inference_pb2.Mode.values())
    assert set(MODE_FROM_WIRE) == generated  # every wire value has a meaning, none is invented
    assert set(MODE_TO_WIRE) == set(Mode)
    for mode in Mode:
        assert MODE_FROM_WIRE[MODE_TO_WIRE[mode]] is mode
    assert MODE_FROM_WIRE[inference_pb2.MODE_UNSPECIFIED] is Mode.RAEE


def test_fallbacks_round_trip_the_generated_enum() -> None:
    assert set(FALLBACK_FROM_WIRE) == set(retrieval_pb2.FallbackReason.values())
    assert set(FALLBACK_TO_WIRE) == set(Fallback)
    for fallback in Fallback:
        assert FALLBACK_FROM_WIRE[FALLBACK_TO_WIRE[fallback]] is fallback
        name = retrieval_pb2.FallbackReason.Name(FALLBACK_TO_WIRE[fallback])
        assert name == f"FALLBACK_REASON_{fallback.name}"


def test_an_unknown_enum_value_is_refused_by_name() -> None:
    request = inference_pb2.ClassifyRequest(task="t", text="x")
    request.mode = 7  # type: ignore[assignment]  # what a newer or broken client may send
    with pytest.raises(InvalidArgumentError, match="mode: unknown mode 7"):
        work_item(request, 100)
    response = retrieval_pb2.ExitDistributionResponse(exit_layer=3)
    response.fallback = 9  # type: ignore[assignment]
    with pytest.raises(RemoteError, match="unknown fallback"):
        exit_plan(response, with_distribution=False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"text": "x"}, "task: is required"),
        ({"task": "Bad Name", "text": "x"}, "task: 'Bad Name' is not a valid task name"),
        ({"task": "t" * 5000, "text": "x"}, "..."),  # bounded: the name is not echoed whole
        ({"task": "t", "text": "  "}, "text: must not be empty"),
        ({"task": "t", "text": "x" * 101}, "text: 101 characters exceed the limit of 100"),
        ({"task": "t", "text": "x", "layer": 3}, "layer: is only valid with MODE_FIXED"),
        ({"task": "t", "text": "x", "mode": inference_pb2.MODE_FIXED}, "layer: is required with MODE_FIXED"),
        ({"task": "t", "text": "x", "mode": inference_pb2.MODE_FIXED, "layer": -1}, "layer: -1 is outside"),
        ({"task": "t", "text": "x", "k": 0}, "k: 0 is outside"),
    ],
)
def test_classify_requests_are_refused_by_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises((InvalidArgumentError, InvalidTaskNameError)) as caught:
        work_item(inference_pb2.ClassifyRequest(**fields), 100)  # type: ignore[arg-type]
    assert message in str(caught.value)
    assert len(str(caught.value)) < 200
    assert status_of(caught.value)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_exit_queries_are_validated_once_for_both_services() -> None:
    query = exit_query(retrieval_pb2.ExitDistributionRequest(task="t", text="hello"), LIMITS)
    assert (query.task, query.k, query.text) == ("t", 12, "hello")
    with pytest.raises(InvalidArgumentError, match=r"k: 65 is outside 1\.\.64"):
        exit_query(retrieval_pb2.ExitDistributionRequest(task="t", text="x", k=65), LIMITS)
    with pytest.raises(InvalidArgumentError, match="text: give a non-empty text or an embedding"):
        exit_query(retrieval_pb2.ExitDistributionRequest(task="t"), LIMITS)


def test_the_client_request_builder_names_a_bad_mode() -> None:
    assert classify_request("t", "x", "full").mode == inference_pb2.MODE_FULL
    with pytest.raises(InvalidArgumentError, match="mode: 'fast' is not one of"):
        classify_request("t", "x", "fast")


def test_relayed_errors_keep_their_status() -> None:
    code, message = status_of(RemoteError(grpc.StatusCode.NOT_FOUND.value[0], "task 'x' has no version"))
    assert (code, message) == (grpc.StatusCode.NOT_FOUND, "task 'x' has no version")


def _ended_at_deadline(method: str) -> int:
    """Calls of ``method`` the server ended at their deadline.

    Two timers race there: the handler's own wait (DEADLINE_EXCEEDED) and gRPC
    cancelling the call when the deadline passes (CANCELLED). Either ends the handler.
    """
    return sum(requests_counted(method, code) for code in ("DEADLINE_EXCEEDED", "CANCELLED"))


async def test_the_retrieval_service_gives_up_at_the_callers_deadline(
    served_home: Path, encoder: QueryEncoder
) -> None:
    """A call whose deadline passes while the service is busy ends on the server too."""
    server = await retrieval_server.start(
        RetrievalSettings(port=0, metrics_port=0, home=served_home, default_deadline_s=60), encoder=encoder
    )
    try:
        # Occupy the service's one worker thread, as a long search would.
        busy = asyncio.get_running_loop().run_in_executor(server.servicer._executor, time.sleep, 6)
        before = _ended_at_deadline("GetTask")
        async with grpc.aio.insecure_channel(f"localhost:{server.port}") as channel:
            stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetTask(retrieval_pb2.GetTaskRequest(task="demo-sentiment"), timeout=1.0)
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(1.5)  # the server's handler has ended well before the busy thread frees up
        assert _ended_at_deadline("GetTask") == before + 1
        assert not busy.done()
        await busy
    finally:
        await server.stop(0)
