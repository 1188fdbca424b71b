"""OpenTelemetry tracing, when the optional extra ``[otel]`` is installed (a no-op otherwise).

Configured only through the standard ``OTEL_*`` variables: the SDK reads the
endpoint, headers, service name, resource attributes and sampler itself
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...); ``raee/settings.py``
reads the two that choose whether and where to export (``OTEL_SDK_DISABLED``,
``OTEL_TRACES_EXPORTER``). While tracing is on (:func:`setup` runs before the
servers start), both services get the gRPC server interceptor, and the worker's
channel to the retrieval service the client interceptor, so the trace context
travels worker -> retrieval in the call's metadata.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from raee.settings import TracingSettings

logger = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace

    _API = True
except ImportError:  # the [otel] extra is not installed
    _API = False


def setup(service_name: str, settings: TracingSettings) -> bool:
    """Install the SDK's tracer provider and exporter (at a server's entry point); whether tracing is on."""
    if settings.sdk_disabled or settings.traces_exporter == "none":
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        return False
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return True  # already configured (a test's in-memory exporter, or the other service in `raee up`)
    exporter: SpanExporter
    if settings.traces_exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            logger.warning(
                "OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-grpc; no tracing"
            )
            return False
        exporter = OTLPSpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    logger.info("tracing: %s spans of %s", settings.traces_exporter, service_name)
    return True


def enabled() -> bool:
    """Whether spans are recorded: an SDK tracer provider is installed (by :func:`setup` or a test)."""
    if not _API:
        return False
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


# The interceptors go in only while tracing is on: without a provider they would still
# wrap every call (about 0.25 ms a hop on the 2-core development machine) to make spans
# that nothing records.
def server_interceptors() -> list[Any]:
    if not enabled():
        return []
    try:
        from opentelemetry.instrumentation.grpc import aio_server_interceptor
    except ImportError:
        return []
    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def client_interceptors() -> list[Any]:
    if not enabled():
        return []
    try:
        from opentelemetry.instrumentation.grpc import aio_client_interceptors
    except ImportError:
        return []
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]


def current_context() -> Any:
    """The caller's trace context, to carry across the micro-batcher's queue."""
    return otel_context.get_current() if _API else None


@contextlib.contextmanager
def attached(context: Any) -> Iterator[None]:
    """Make ``context`` current (the batch runs in the trace of its first request)."""
    if not _API or context is None:
        yield
        return
    token = otel_context.attach(context)
    try:
        yield
    finally:
        otel_context.detach(token)


def record_span(name: str, parent: Any, start_ns: int, end_ns: int, **attributes: Any) -> None:
    """A finished span with explicit times, under ``parent`` (e.g. a request's queue wait)."""
    if not _API or parent is None:
        return
    span = trace.get_tracer("raee").start_span(
        name, context=parent, start_time=start_ns, attributes=attributes
    )
    span.end(end_time=end_ns)


@contextlib.contextmanager
def span(name: str, links_from: Sequence[Any] = (), **attributes: Any) -> Iterator[None]:
    """A span around a block, in the current context; ``links_from``: contexts to link to."""
    if not _API:
        yield
        return
    links = []
    for linked in links_from:
        context = trace.get_current_span(linked).get_span_context() if linked is not None else None
        if context is not None and context.is_valid:
            links.append(trace.Link(context))
    with trace.get_tracer("raee").start_as_current_span(name, links=links, attributes=attributes):
        yield
