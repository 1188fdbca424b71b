"""End to end over gRPC: real servers on localhost ports, the real backbone, encoder and embedded Qdrant."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from ingest import run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.exit_info import best_exit
from raee.exit_rule import choose_exit
from raee.store import VersionMeta, open_store
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, retrieval_pb2, retrieval_pb2_grpc
from raee.wire.inference import classify_request
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair
from tests.conftest import DEMO_TEST_TEXTS as TEXTS
from tests.conftest import start_demo_pair


@pytest.fixture
async def client(pair: ServicePair) -> AsyncIterator[InferenceClient]:
    async with InferenceClient(pair.inference_address) as opened:
        yield opened


def library_answer(
    gemma: Backbone, encoder: QueryEncoder, served_home: Path, spec: TaskSpec, text: str
) -> tuple[str, int]:
    """What the library computes directly, without any service: the reference for the tests."""
    store = open_store(home=served_home)
    neighbours = store.search(spec.name, encoder.encode([spec.key_text(text)]), 12).neighbours[0]
    exit_layer = choose_exit(neighbours, gemma.num_layers).exit_layer
    probabilities = gemma.for_task(spec).predict_at([text], exit_layer)[0]
    return spec.label_names[int(np.argmax(probabilities))], exit_layer


async def test_classify_matches_the_library(
    client: InferenceClient, gemma: Backbone, encoder: QueryEncoder, served_home: Path, demo_spec: TaskSpec
) -> None:
    for text in TEXTS:
        answer = await client.classify(demo_spec.name, text)
        assert (answer.label, answer.exit_layer) == library_answer(
            gemma, encoder, served_home, demo_spec, text
        )
        assert answer.num_layers == 18
        assert not answer.degraded
        assert len(answer.probabilities) == 2
        assert answer.retrieval_ms > 0
        assert answer.forward_ms > 0


async def test_full_and_fixed_modes(client: InferenceClient, gemma: Backbone, demo_spec: TaskSpec) -> None:
    probe = gemma.for_task(demo_spec)
    full = await client.classify(demo_spec.name, TEXTS[0], "full")
    assert full.exit_layer == 18
    np.testing.assert_allclose(full.probabilities, probe.predict_at([TEXTS[0]], 18)[0], atol=1e-5)
    fixed = await client.classify(demo_spec.name, TEXTS[0], "fixed", layer=5)
    assert fixed.exit_layer == 5
    np.testing.assert_allclose(fixed.probabilities, probe.predict_at([TEXTS[0]], 5)[0], atol=1e-5)


async def test_batch_and_concurrent_calls_equal_sequential_answers(
    client: InferenceClient, demo_spec: TaskSpec
) -> None:
    texts = (TEXTS * 8)[:64]
    sequential = [await client.classify(demo_spec.name, text) for text in TEXTS]
    expected = {
        text: (a.label, a.exit_layer, list(a.probabilities))
        for text, a in zip(TEXTS, sequential, strict=True)
    }

    def check(answer: inference_pb2.ClassifyResponse, text: str) -> None:
        label, exit_layer, probabilities = expected[text]
        assert (answer.label, answer.exit_layer) == (label, exit_layer)
        np.testing.assert_allclose(answer.probabilities, probabilities, atol=1e-5)

    batch = await client.classify_batch(demo_spec.name, texts)
    assert len(batch.results) == 64
    for result, text in zip(batch.results, texts, strict=True):
        check(result.response, text)

    concurrent = await asyncio.gather(*(client.classify(demo_spec.name, text) for text in texts))
    for answer, text in zip(concurrent, texts, strict=True):
        check(answer, text)
    # Requests were batched: several of them shared a forward pass.
    assert max(answer.batch_group_size for answer in concurrent) > 1


async def test_a_batch_runs_one_pass_whose_rows_leave_at_their_own_exits(
    client: InferenceClient, demo_spec: TaskSpec
) -> None:
    texts = TEXTS * 2  # 16 = one micro-batch
    batch = await client.classify_batch(demo_spec.name, texts)
    answers = [r.response for r in batch.results]
    deep = {answer.exit_layer for answer in answers} - {0}
    assert len(deep) > 1, "the demo texts leave above the embeddings at different layers"
    assert {answer.batch_group_size for answer in answers} == {16}
    # Each row read at its own exit, as when it runs alone.
    for answer, text in zip(answers[:8], TEXTS, strict=True):
        alone = await client.classify(demo_spec.name, text)
        assert (answer.label, answer.exit_layer) == (alone.label, alone.exit_layer)
        np.testing.assert_allclose(answer.probabilities, alone.probabilities, atol=1e-5)


async def test_errors_have_the_right_status_and_name_the_field(
    client: InferenceClient, demo_spec: TaskSpec
) -> None:
    stub = client.stub
    cases = [
        (classify_request("no-such-task", "hello"), grpc.StatusCode.NOT_FOUND, "no-such-task"),
        (classify_request(demo_spec.name, ""), grpc.StatusCode.INVALID_ARGUMENT, "text:"),
        (classify_request(demo_spec.name, "x" * 9000), grpc.StatusCode.INVALID_ARGUMENT, "text:"),
        (classify_request("", "hello"), grpc.StatusCode.INVALID_ARGUMENT, "task:"),
        (
            classify_request(demo_spec.name, "hi", "fixed", layer=19),
            grpc.StatusCode.INVALID_ARGUMENT,
            "layer:",
        ),
        (classify_request(demo_spec.name, "hi", "fixed"), grpc.StatusCode.INVALID_ARGUMENT, "layer:"),
        (classify_request(demo_spec.name, "hi", "full", layer=3), grpc.StatusCode.INVALID_ARGUMENT, "layer:"),
        (classify_request(demo_spec.name, "hi", k=0), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        (classify_request(demo_spec.name, "hi", k=100000), grpc.StatusCode.INVALID_ARGUMENT, "k:"),
        (
            inference_pb2.ClassifyRequest(task=demo_spec.name, text="hi", mode=7),
            grpc.StatusCode.INVALID_ARGUMENT,
            "mode:",
        ),  # type: ignore[arg-type]
        (classify_request(demo_spec.name, "word " * 600), grpc.StatusCode.INVALID_ARGUMENT, "text:"),
    ]
    for request, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Classify(request, timeout=30)
        assert caught.value.code() == code, (request, caught.value.details())
        assert field in (caught.value.details() or ""), caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.ClassifyBatch(inference_pb2.ClassifyBatchRequest(), timeout=30)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_batch_items_fail_alone(client: InferenceClient, demo_spec: TaskSpec) -> None:
    request = inference_pb2.ClassifyBatchRequest(
        requests=[classify_request(demo_spec.name, TEXTS[0]), classify_request("no-such-task", "x")]
    )
    response = await client.stub.ClassifyBatch(request, timeout=30)
    assert response.results[0].response.label in demo_spec.label_names
    assert response.results[1].error.code == grpc.StatusCode.NOT_FOUND.value[0]


async def test_retrieval_service_api(pair: ServicePair, demo_spec: TaskSpec, encoder: QueryEncoder) -> None:
    async with grpc.aio.insecure_channel(pair.retrieval_address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        tasks = await stub.ListTasks(retrieval_pb2.ListTasksRequest())
        assert demo_spec.name in [t.task for t in tasks.tasks]
        info = await stub.GetTask(retrieval_pb2.GetTaskRequest(task=demo_spec.name))
        assert (info.points, info.num_layers, len(info.accuracy_per_exit_pct)) == (48, 18, 19)
        assert [label.word for label in info.spec.labels] == list(demo_spec.label_words)

        by_text = await stub.GetExitDistribution(
            retrieval_pb2.ExitDistributionRequest(
                task=demo_spec.name, text=TEXTS[1], k=5, include_neighbours=True
            )
        )
        assert len(by_text.distribution) == 19
        assert sum(by_text.distribution) == pytest.approx(1.0, abs=1e-5)
        assert by_text.exit_layer == int(np.argmax(by_text.distribution))
        assert len(by_text.neighbours) == 5
        assert by_text.neighbours[0].weight == pytest.approx(1.0)
        vector = encoder.encode([demo_spec.key_text(TEXTS[1])])[0]
        by_vector = await stub.GetExitDistribution(
            retrieval_pb2.ExitDistributionRequest(
                task=demo_spec.name, embedding=retrieval_pb2.Embedding(values=vector), k=5
            )
        )
        assert by_vector.exit_layer == by_text.exit_layer
        np.testing.assert_allclose(by_vector.distribution, by_text.distribution, atol=1e-5)

        with pytest.raises(grpc.aio.AioRpcError) as bad_dim:
            await stub.GetExitDistribution(
                retrieval_pb2.ExitDistributionRequest(
                    task=demo_spec.name, embedding=retrieval_pb2.Embedding(values=[1.0])
                )
            )
        assert bad_dim.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "embedding:" in (bad_dim.value.details() or "")


async def test_health_and_reflection(pair: ServicePair) -> None:
    for address, service in (
        (pair.inference_address, "raee.v1.InferenceService"),
        (pair.retrieval_address, "raee.v1.RetrievalService"),
    ):
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", service):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.insecure_channel(address) as sync_channel:  # the reflection client is synchronous
            database = ProtoReflectionDescriptorDatabase(sync_channel)
            services = await asyncio.to_thread(lambda db=database: list(db.get_services()))
            assert service in services
            assert "grpc.health.v1.Health" in services
            descriptor = await asyncio.to_thread(database.FindFileContainingSymbol, service)
            assert descriptor.package == "raee.v1"


async def test_new_task_is_served_without_restart(
    pair: ServicePair, client: InferenceClient, served_home: Path, gemma: Backbone, encoder: QueryEncoder
) -> None:
    spec = TaskSpec.from_flags("fresh", "{text} This is", ["bad=bad", "good=good"])
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", TaskSpec.from_file(DEMO_DIR / "task.yaml"))
    relabelled = [replace(e, label="good" if e.label == "positive" else "bad") for e in examples]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await client.classify("fresh", TEXTS[0])
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    run_ingest(
        spec,
        relabelled[:16],
        backbone=gemma,
        encoder=encoder,
        store=open_store(home=served_home),
        progress=False,
    )
    answer = await client.classify("fresh", TEXTS[0])
    assert answer.label in ("bad", "good")


async def test_backbone_mismatch_is_a_failed_precondition(
    pair: ServicePair, client: InferenceClient, served_home: Path, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    store = open_store(home=served_home)
    spec = TaskSpec.from_flags(
        "other-backbone", demo_spec.template, [f"{label.name}={label.word}" for label in demo_spec.labels]
    )
    with store.begin_version(spec.name, encoder.dim) as writer:
        writer.publish(
            VersionMeta(
                spec=spec, backbone_id="some-other-model/L12/abcdef", encoder_id=encoder.id, num_layers=12
            )
        )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.classify(spec.name, TEXTS[0])
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "some-other-model" in (caught.value.details() or "")


@pytest.mark.parametrize("recorded", [True, False])
async def test_worker_degrades_to_the_best_exit_without_retrieval(
    served_home: Path,
    tmp_path: Path,
    gemma: Backbone,
    encoder: QueryEncoder,
    demo_spec: TaskSpec,
    recorded: bool,
) -> None:
    """Retrieval down: answers at the task's best single exit from ingest, or full depth without one."""
    home = tmp_path / "home"
    shutil.copytree(served_home, home)
    manifest_path = home / "tasks" / demo_spec.name / "CURRENT.json"
    manifest = json.loads(manifest_path.read_text())
    best = best_exit(manifest["stats"]["accuracy_per_exit_pct"])
    assert best is not None and best < 18
    if not recorded:  # a version without per-exit accuracies
        del manifest["stats"]["accuracy_per_exit_pct"]
        manifest["stats"].pop("best_exit", None)
        manifest_path.write_text(json.dumps(manifest))
        best = 18
    pair = await start_demo_pair(home, gemma, encoder, retrieval_timeout_ms=500.0)
    try:
        async with InferenceClient(pair.inference_address) as client:
            healthy = await client.classify(demo_spec.name, TEXTS[1])  # caches the task spec
            assert not healthy.degraded
            await pair.retrieval.stop(0)
            answers = await asyncio.gather(*(client.classify(demo_spec.name, text) for text in TEXTS))
            probe = gemma.for_task(demo_spec)
            for answer, text in zip(answers, TEXTS, strict=True):
                assert answer.degraded
                assert "UNAVAILABLE" in answer.degraded_reason or "retrying shortly" in answer.degraded_reason
                assert ("best single exit" in answer.degraded_reason) == recorded
                assert answer.exit_layer == best
                np.testing.assert_allclose(answer.probabilities, probe.predict_at([text], best)[0], atol=1e-5)
    finally:
        await pair.inference.stop(0)


async def test_deadlines_are_honoured(client: InferenceClient, demo_spec: TaskSpec) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.stub.Classify(classify_request(demo_spec.name, TEXTS[0]), timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    answer = await client.classify(demo_spec.name, TEXTS[0])  # the worker is still fine
    assert answer.label in demo_spec.label_names
