"""OpenTelemetry: one Classify is one trace across both services (the SDK's in-memory exporter)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.serving import tracing
from raee.settings import TracingSettings
from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from tests.conftest import DEMO_TEST_TEXTS as TEXTS
from tests.conftest import start_demo_pair


@pytest.mark.slow
async def test_one_classify_is_one_trace_across_both_services(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    # A server's setup keeps a provider already in place, and OTEL_SDK_DISABLED turns it off.
    assert tracing.setup("raee-test", TracingSettings())
    assert not tracing.setup("raee-test", TracingSettings(sdk_disabled=True))
    pair = await start_demo_pair(served_home, gemma, encoder)
    try:
        exporter.clear()
        async with InferenceClient(pair.inference_address) as client:
            answer = await client.classify(demo_spec.name, TEXTS[0])
        classify = []
        for _ in range(200):  # the server span ends just after the answer is sent
            spans = exporter.get_finished_spans()
            classify = [s for s in spans if s.name == "/raee.v1.InferenceService/Classify"]
            if classify:
                break
            await asyncio.sleep(0.01)
        assert len(classify) == 1 and classify[0].kind == SpanKind.SERVER
        trace_id = classify[0].context.trace_id
        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        kinds = {(s.name, s.kind) for s in spans}
        batch_call = "/raee.v1.RetrievalService/BatchGetExitDistribution"
        assert (batch_call, SpanKind.CLIENT) in kinds  # the worker's call ...
        assert (batch_call, SpanKind.SERVER) in kinds  # ... answered by the retrieval service, same trace
        names = [s.name for s in spans]
        for name in ("queue wait", "micro-batch", "retrieval", "forward"):
            assert name in names, names
        forward = next(s for s in spans if s.name == "forward")
        assert forward.attributes is not None and forward.attributes["exit_layer"] == answer.exit_layer
        assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 1  # nothing else traced
    finally:
        await pair.stop()


def test_no_interceptors_while_tracing_is_off() -> None:
    """Without a tracer provider the gRPC interceptors would only cost time; none are installed.

    A fresh interpreter: this process may already hold the provider of the test above.
    """
    check = (
        "from raee.serving import tracing\n"
        "assert not tracing.enabled()\n"
        "assert tracing.server_interceptors() == [] and tracing.client_interceptors() == []\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "assert tracing.enabled()\n"
        "assert len(tracing.server_interceptors()) == 1 and tracing.client_interceptors()\n"
    )
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
