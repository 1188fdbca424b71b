"""Service configuration: defaults, overridden by environment variables, overridden by flags.

Each field names its environment variable; :func:`add_flags` derives a flag
(``--max-batch`` for ``max_batch``) from every field, and :func:`load` applies
the three layers in order. docs/configuration.md lists them all.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER
from raee.exit_rule import DEFAULT_K
from raee.serving.security import ServerSecurity

T = TypeVar("T")


def env(name: str, default: Any, help: str, *, secret: bool = False) -> Any:
    """A config field read from ``name``; secrets are left out of the dataclass repr."""
    return field(default=default, repr=not secret, metadata={"env": name, "help": help})


@dataclass(frozen=True)
class ServiceConfig:
    """What both services read: limits, shutdown grace, TLS files, bearer token."""

    max_text_chars: int = env("RAEE_MAX_TEXT_CHARS", 8192, "longest accepted text")
    max_batch_requests: int = env("RAEE_MAX_BATCH_REQUESTS", 1024, "most items in one batch call")
    grace_s: float = env("RAEE_GRACE_S", 10.0, "graceful-shutdown grace period, seconds")
    default_deadline_s: float = env("RAEE_DEFAULT_DEADLINE_S", 30.0, "deadline of calls that set none")
    auth_token: str = env("RAEE_AUTH_TOKEN", "", "bearer token callers must send; empty: none", secret=True)
    tls_cert: str = env("RAEE_TLS_CERT", "", "server certificate (PEM file); empty: plaintext")
    tls_key: str = env("RAEE_TLS_KEY", "", "server private key (PEM file)")
    tls_client_ca: str = env("RAEE_TLS_CLIENT_CA", "", "CA of client certificates: mutual TLS")
    listen_host: str = env("RAEE_LISTEN_HOST", "[::]", "address the gRPC server listens on")
    max_connection_age_s: float = env(
        "RAEE_MAX_CONNECTION_AGE_S", 30.0, "connections closed (GOAWAY) after this; 0: never"
    )
    max_connection_age_grace_s: float = env(
        "RAEE_MAX_CONNECTION_AGE_GRACE_S", 30.0, "then calls still on a closed connection are cancelled"
    )

    @property
    def security(self) -> ServerSecurity:
        return ServerSecurity(self.auth_token, self.tls_cert, self.tls_key, self.tls_client_ca)


@dataclass(frozen=True)
class RetrievalConfig(ServiceConfig):
    port: int = env("RAEE_RETRIEVAL_PORT", 50051, "gRPC port")
    metrics_port: int = env("RAEE_RETRIEVAL_METRICS_PORT", 9101, "Prometheus /metrics port (0: off)")
    store_url: str = env("RAEE_QDRANT_URL", "", "Qdrant URL; empty: the embedded store")
    home: str = env("RAEE_HOME", ".raee", "data folder of the embedded store")
    encoder: str = env("RAEE_ENCODER", DEFAULT_ENCODER, "sentence-transformers model")
    default_k: int = env("RAEE_DEFAULT_K", DEFAULT_K, "neighbours per query when the request sets none")
    max_k: int = env("RAEE_MAX_K", 256, "largest k a request may ask for")


@dataclass(frozen=True)
class InferenceConfig(ServiceConfig):
    port: int = env("RAEE_INFERENCE_PORT", 50052, "gRPC port")
    metrics_port: int = env("RAEE_INFERENCE_METRICS_PORT", 9102, "Prometheus /metrics port (0: off)")
    retrieval_addr: str = env("RAEE_RETRIEVAL_ADDR", "localhost:50051", "retrieval service host:port")
    backbone: str = env("RAEE_BACKBONE", DEFAULT_BACKBONE, "backbone: gemma-3-270m, .gguf, folder, hub id")
    max_batch: int = env("RAEE_MAX_BATCH", 16, "most requests in one micro-batch")
    max_wait_ms: float = env("RAEE_MAX_WAIT_MS", 5.0, "longest a request waits for its batch to fill")
    max_queue: int = env("RAEE_MAX_QUEUE", 1024, "queued requests before RESOURCE_EXHAUSTED")
    retrieval_timeout_ms: float = env(
        "RAEE_RETRIEVAL_TIMEOUT_MS", 1000.0, "then answer at full depth, degraded"
    )
    task_ttl_s: float = env("RAEE_TASK_TTL_S", 5.0, "how long a task's spec is trusted before rechecking")
    retrieval_token: str = env(
        "RAEE_RETRIEVAL_TOKEN", "", "bearer token for the retrieval service", secret=True
    )
    retrieval_tls_ca: str = env("RAEE_RETRIEVAL_TLS_CA", "", "CA of the retrieval service: TLS to it")
    retrieval_tls_cert: str = env("RAEE_RETRIEVAL_TLS_CERT", "", "client certificate for mutual TLS")
    retrieval_tls_key: str = env("RAEE_RETRIEVAL_TLS_KEY", "", "client key for mutual TLS")


def add_flags(parser: argparse.ArgumentParser, config_type: type[Any]) -> None:
    """One flag per field but secrets (environment only: flags show in ``ps``); unset flags stay ``None``."""
    for item in dataclasses.fields(config_type):
        if not item.repr:
            continue
        parser.add_argument(
            "--" + item.name.replace("_", "-"),
            type=_parser_of(item.type),
            default=None,
            help=f"{item.metadata['help']} (${item.metadata['env']}, default {item.default!r})",
        )


def load(config_type: type[T], args: argparse.Namespace | None = None, **overrides: Any) -> T:
    """Defaults < environment < flags < ``overrides``."""
    values: dict[str, Any] = {}
    for item in dataclasses.fields(config_type):  # type: ignore[arg-type]
        parse = _parser_of(item.type)
        raw = os.environ.get(item.metadata["env"])
        if raw is not None and raw != "":
            try:
                values[item.name] = parse(raw)
            except ValueError:
                raise ValueError(f"${item.metadata['env']}: {raw!r} is not a valid {item.type}") from None
        flag = getattr(args, item.name, None) if args is not None else None
        if flag is not None:
            values[item.name] = flag
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_type(**values)


def _parser_of(type_name: Any) -> Any:
    return {"int": int, "float": float, "str": str}[str(type_name)]
