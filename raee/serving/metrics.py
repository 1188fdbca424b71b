"""Prometheus metrics of both services (one registry a process; names say which service)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

from raee.settings import ServiceSettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUEST_SECONDS = Histogram(
    "raee_grpc_request_seconds",
    "gRPC request latency by method and status code",
    ["method", "code"],
    buckets=LATENCY_BUCKETS,
)
EXIT_LAYER = Histogram(
    "raee_exit_layer",
    "Exit layer chosen, by service and mode",
    ["service", "mode"],
    buckets=tuple(range(0, 65)),
)
FALLBACKS = Counter("raee_retrieval_fallbacks_total", "Queries answered at full depth, by reason", ["reason"])
RETRIEVAL_STAGE_SECONDS = Histogram(
    "raee_retrieval_stage_seconds", "Retrieval time by stage", ["stage"], buckets=LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "raee_inference_batch_size", "Requests per micro-batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
BATCH_GROUPS = Histogram(
    "raee_inference_batch_groups",
    "Task groups per micro-batch (rows of a group run together, leaving at their own exits)",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32),
)
GROUP_SIZE = Histogram(
    "raee_inference_group_size",
    "Requests in one task group of a micro-batch",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DEGRADED = Counter(
    "raee_inference_degraded_total",
    "Requests answered without retrieval (at the task's best exit, else full depth), by reason",
    ["reason"],
)
REJECTED = Counter(
    "raee_grpc_rejected_total",
    "Calls refused before their handler ran, by method and reason (unauthenticated, undecodable)",
    ["method", "reason"],
)
SHED = Counter(
    "raee_inference_shed_total",
    "Requests refused with RESOURCE_EXHAUSTED before queueing, by reason (queue_full, deadline, drain)",
    ["reason"],
)


def serve_metrics(port: int, host: str = "0.0.0.0", *, tls_cert: str = "", tls_key: str = "") -> None:
    """Expose ``/metrics`` on ``host:port`` (port 0 disables), over HTTPS when given a certificate.

    A port already in use is a :class:`ValueError` with a one-line message (exit
    status 2 from the CLI), not a traceback.
    """
    if not port:
        return
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("metrics TLS needs both RAEE_TLS_CERT and RAEE_TLS_KEY")
    try:
        start_http_server(port, addr=host, certfile=tls_cert or None, keyfile=tls_key or None)
    except OSError as exc:
        raise ValueError(f"metrics_port: cannot listen on {host}:{port} ({exc.strerror or exc})") from None


def serve_metrics_of(settings: ServiceSettings, port: int) -> None:
    """``serve_metrics`` as the service's settings say (host, and TLS when RAEE_METRICS_TLS is on)."""
    if settings.metrics_tls and not settings.tls_cert:
        raise ValueError("RAEE_METRICS_TLS needs RAEE_TLS_CERT and RAEE_TLS_KEY")
    tls = settings.metrics_tls
    serve_metrics(
        port,
        settings.metrics_host,
        tls_cert=settings.tls_cert if tls else "",
        tls_key=settings.tls_key if tls else "",
    )
