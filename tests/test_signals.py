"""Operating signals: the warm-up before SERVING, and the queue and in-flight gauges under load."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from tests.conftest import DEMO_TEST_TEXTS as TEXTS
from tests.conftest import start_demo_pair


def sample(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


@pytest.mark.slow
async def test_warm_up_then_gauges_follow_the_queue(
    served_home: Path,
    gemma: Backbone,
    encoder: QueryEncoder,
    demo_spec: TaskSpec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        pair = await start_demo_pair(served_home, gemma, encoder, max_batch=4)
    try:
        messages = [r.getMessage() for r in caplog.records]
        assert any(
            m.startswith("warm-up: one full-depth batch of 4 texts and the row-dropping check in")
            for m in messages
        ), messages
        assert any(m.startswith("warm-up: one encoder pass in") for m in messages), messages
        waits_before = sample("raee_inference_queue_wait_seconds_count")
        texts = (TEXTS * 3)[:20]
        async with InferenceClient(pair.inference_address) as client:
            calls = [asyncio.ensure_future(client.classify(demo_spec.name, t)) for t in texts]
            in_flight = 0.0
            for _ in range(1000):  # until the calls reach the worker
                await asyncio.sleep(0.005)
                in_flight = sample("raee_inference_requests_in_flight")
                if in_flight:
                    break
            assert 1 <= in_flight <= len(texts)
            assert 0 <= sample("raee_inference_queue_size") <= len(texts)
            await asyncio.gather(*calls)
        assert sample("raee_inference_requests_in_flight") == 0
        assert sample("raee_inference_queue_size") == 0
        assert sample("raee_inference_queue_wait_seconds_count") - waits_before == len(texts)
    finally:
        await pair.stop()
