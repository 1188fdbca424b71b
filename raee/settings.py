"""Every setting of RAEE serve, in one place: the only module that reads the environment.

Each setting is a typed, validated field (pydantic-settings) with the environment
variable that sets it, a default and a one-line meaning. Precedence: defaults <
environment (``RAEE_*``) < values passed in (the CLI's flags). Empty variables
count as unset. Secrets are ``SecretStr``: they never show in reprs or logs, and
have no flag (flags show in ``ps``).

Entry points (the CLI, the servers' ``serve``) load the settings once and pass
plain values down; nothing below them looks at the environment.
``docs/configuration.md`` is generated from these models (``raee config --write-reference``),
and the Kubernetes contract check reads its known keys from :func:`env_keys`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER, DEFAULT_ENCODER_RUNTIME, EncoderRuntime
from raee.exit_rule import DEFAULT_K

SettingsT = TypeVar("SettingsT", bound="RaeeSettings")

Port = int  # documented as a range in each field


def env(name: str, default: Any, meaning: str, **constraints: Any) -> Any:
    """A setting read from the environment variable ``name``."""
    return Field(default, validation_alias=name, description=meaning, **constraints)


class SettingsError(ValueError):
    """A setting has a value it cannot take; the message names the variable."""


class RaeeSettings(BaseSettings):
    model_config = SettingsConfigDict(
        # Only the aliases (the documented names) are read: case-sensitive, so that
        # a field name such as ``home`` never matches an unrelated variable (``HOME``).
        env_prefix="RAEE_",
        case_sensitive=True,
        frozen=True,
        extra="ignore",
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
    )


class PathSettings(RaeeSettings):
    home: Path = env("RAEE_HOME", Path(".raee"), "data folder of the embedded store")
    cache_dir: Path = env(
        "RAEE_CACHE_DIR",
        Path.home() / ".cache" / "raee",
        "converted model weights (the GGUF file's safetensors copy, the encoder's ONNX export)",
    )


class LogSettings(RaeeSettings):
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = env(
        "RAEE_LOG_LEVEL", "INFO", "log level"
    )
    log_format: Literal["text", "json"] = env("RAEE_LOG_FORMAT", "text", "`json`: one JSON object a line")


class ModelSettings(RaeeSettings):
    backbone: str = env("RAEE_BACKBONE", DEFAULT_BACKBONE, "backbone: gemma-3-270m, .gguf, folder, hub id")
    encoder: str = env("RAEE_ENCODER", DEFAULT_ENCODER, "sentence-transformers query encoder")
    encoder_runtime: EncoderRuntime = env(
        "RAEE_ENCODER_RUNTIME",
        DEFAULT_ENCODER_RUNTIME,
        "query encoder runtime: `onnx` (ONNX Runtime, cached export) or `torch` (sentence-transformers)",
    )


class StoreSettings(RaeeSettings):
    store_url: str = env(
        "RAEE_QDRANT_URL", "", "Qdrant URL (http(s)://host:6333); empty: embedded; local:PATH: local mode"
    )
    qdrant_api_key: SecretStr = env("RAEE_QDRANT_API_KEY", SecretStr(""), "Qdrant API key")
    qdrant_shards: int | None = env("RAEE_QDRANT_SHARDS", None, "shards of new task collections", ge=1)
    qdrant_replication: int | None = env(
        "RAEE_QDRANT_REPLICATION", None, "replication factor of new task collections", ge=1
    )
    home: Path = env("RAEE_HOME", Path(".raee"), "data folder of the embedded store")


class ServiceSettings(RaeeSettings):
    """What both services read: limits, shutdown grace, TLS files, bearer token."""

    max_text_chars: int = env("RAEE_MAX_TEXT_CHARS", 8192, "longest accepted text", ge=1)
    max_batch_requests: int = env("RAEE_MAX_BATCH_REQUESTS", 1024, "most items in one batch call", ge=1)
    grace_s: float = env("RAEE_GRACE_S", 10.0, "graceful-shutdown grace period, seconds", ge=0)
    default_deadline_s: float = env("RAEE_DEFAULT_DEADLINE_S", 30.0, "deadline of calls that set none", gt=0)
    auth_token: SecretStr = env(
        "RAEE_AUTH_TOKEN", SecretStr(""), "bearer token callers must send; empty: none"
    )
    tls_cert: str = env("RAEE_TLS_CERT", "", "server certificate (PEM file); empty: plaintext")
    tls_key: str = env("RAEE_TLS_KEY", "", "server private key (PEM file)")
    tls_client_ca: str = env("RAEE_TLS_CLIENT_CA", "", "CA of client certificates: mutual TLS")
    listen_host: str = env(
        "RAEE_LISTEN_HOST", "[::]", "address the gRPC server listens on (127.0.0.1: this machine only)"
    )
    max_connection_age_s: float = env(
        "RAEE_MAX_CONNECTION_AGE_S",
        30.0,
        "client connections closed (GOAWAY) after about this long, so that clients re-resolve "
        "and reach pods added since (0: never; docs/deploy.md, Balancing)",
        ge=0,
    )
    max_connection_age_grace_s: float = env(
        "RAEE_MAX_CONNECTION_AGE_GRACE_S",
        30.0,
        "calls still running this long after their connection's GOAWAY are cancelled; keep it at "
        "least the longest client deadline",
        ge=0,
    )
    metrics_host: str = env(
        "RAEE_METRICS_HOST", "0.0.0.0", "address /metrics listens on (127.0.0.1: this host only)"
    )
    metrics_tls: bool = env(
        "RAEE_METRICS_TLS", False, "serve /metrics over HTTPS with RAEE_TLS_CERT and RAEE_TLS_KEY"
    )


class RetrievalSettings(ServiceSettings, StoreSettings):
    port: Port = env("RAEE_RETRIEVAL_PORT", 50051, "gRPC port (0: any free port)", ge=0, le=65535)
    metrics_port: Port = env(
        "RAEE_RETRIEVAL_METRICS_PORT", 9101, "Prometheus /metrics port (0: off)", ge=0, le=65535
    )
    encoder: str = env("RAEE_ENCODER", DEFAULT_ENCODER, "sentence-transformers query encoder")
    encoder_runtime: EncoderRuntime = env(
        "RAEE_ENCODER_RUNTIME",
        DEFAULT_ENCODER_RUNTIME,
        "query encoder runtime: `onnx` (ONNX Runtime, cached export) or `torch` (sentence-transformers)",
    )
    encoder_spin: bool = env(
        "RAEE_ENCODER_SPIN",
        True,
        "ONNX encoder threads spin-wait during a run (faster when the service has its cores to itself; "
        "where the encoder shares a process with the backbone, they spin for a lone query only)",
    )
    default_k: int = env("RAEE_DEFAULT_K", DEFAULT_K, "neighbours per query when the request sets none", ge=1)
    max_k: int = env("RAEE_MAX_K", 256, "largest k a request may ask for", ge=1)

    @model_validator(mode="after")
    def _k_in_range(self) -> Self:
        if self.default_k > self.max_k:
            raise ValueError(f"RAEE_DEFAULT_K ({self.default_k}) must not exceed RAEE_MAX_K ({self.max_k})")
        return self


class InferenceSettings(ServiceSettings):
    port: Port = env("RAEE_INFERENCE_PORT", 50052, "gRPC port (0: any free port)", ge=0, le=65535)
    metrics_port: Port = env(
        "RAEE_INFERENCE_METRICS_PORT", 9102, "Prometheus /metrics port (0: off)", ge=0, le=65535
    )
    http_port: int = env(
        "RAEE_INFERENCE_HTTP_PORT",
        8000,
        "REST port: OIP v2 HTTP and /v1/classify (0: any free port, -1: off)",
        ge=-1,
        le=65535,
    )
    http_host: str = env("RAEE_INFERENCE_HTTP_HOST", "0.0.0.0", "address the REST port listens on")
    retrieval_addr: str = env(
        "RAEE_RETRIEVAL_ADDR", "localhost:50051", "retrieval service host:port (or a gRPC target URI)"
    )
    backbone: str = env("RAEE_BACKBONE", DEFAULT_BACKBONE, "backbone: gemma-3-270m, .gguf, folder, hub id")
    max_batch: int = env("RAEE_MAX_BATCH", 16, "most requests in one micro-batch", ge=1)
    max_wait_ms: float = env(
        "RAEE_MAX_WAIT_MS",
        5.0,
        "longest a batch waits to fill (only while smaller than the last batch or the requests open at once)",
        ge=0,
    )
    batches_in_flight: int = env(
        "RAEE_BATCHES_IN_FLIGHT",
        2,
        "micro-batches processed at once: a RAEE batch's retrieval call runs during the previous "
        "batch's forward pass",
        ge=1,
    )
    overlap_retrieval: bool = env(
        "RAEE_OVERLAP_RETRIEVAL", False, "RAEE: run the first layers while retrieval answers"
    )
    max_queue: int = env("RAEE_MAX_QUEUE", 1024, "queued requests before RESOURCE_EXHAUSTED", ge=1)
    retrieval_timeout_ms: float = env(
        "RAEE_RETRIEVAL_TIMEOUT_MS",
        1000.0,
        "then answer at the task's best single exit (full depth without one), degraded",
        gt=0,
    )
    task_ttl_s: float = env(
        "RAEE_TASK_TTL_S", 5.0, "how long a task's spec is trusted before rechecking", ge=0
    )
    retrieval_token: SecretStr = env(
        "RAEE_RETRIEVAL_TOKEN", SecretStr(""), "bearer token for the retrieval service"
    )
    retrieval_tls_ca: str = env("RAEE_RETRIEVAL_TLS_CA", "", "CA of the retrieval service: TLS to it")
    retrieval_tls_cert: str = env("RAEE_RETRIEVAL_TLS_CERT", "", "client certificate for mutual TLS")
    retrieval_tls_key: str = env("RAEE_RETRIEVAL_TLS_KEY", "", "client key for mutual TLS")


class TracingSettings(RaeeSettings):
    """The standard OpenTelemetry variables that decide whether spans are exported (extra ``[otel]``).

    The SDK reads the rest itself: ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ...
    """

    sdk_disabled: bool = env("OTEL_SDK_DISABLED", False, "OpenTelemetry: `true` turns tracing off")
    traces_exporter: Literal["otlp", "console", "none"] = env(
        "OTEL_TRACES_EXPORTER", "otlp", "OpenTelemetry span exporter (with the [otel] extra installed)"
    )


class ClientSettings(RaeeSettings):
    client_token: SecretStr = env(
        "RAEE_CLIENT_TOKEN", SecretStr(""), "bearer token `raee classify` sends to the inference worker"
    )


ALL_SETTINGS: tuple[type[RaeeSettings], ...] = (
    RetrievalSettings,
    InferenceSettings,
    StoreSettings,
    ModelSettings,
    PathSettings,
    LogSettings,
    ClientSettings,
    TracingSettings,
)


def load(kind: type[SettingsT], **values: Any) -> SettingsT:
    """Defaults < environment < ``values`` (``None`` values are ignored: an unset flag)."""
    given = {name: value for name, value in values.items() if value is not None}
    try:
        return kind(**given)
    except ValidationError as error:
        raise SettingsError(_describe(kind, error)) from None


def env_name(field: FieldInfo) -> str:
    alias = field.validation_alias
    assert isinstance(alias, str), "every setting names its environment variable"
    return alias


def env_keys() -> frozenset[str]:
    """Every environment variable any RAEE setting reads."""
    return frozenset(env_name(field) for kind in ALL_SETTINGS for field in kind.model_fields.values())


def child_environment(settings: RaeeSettings) -> dict[str, str]:
    """This process's environment with ``settings``' variables over it: a child process started
    with it loads the same settings (secrets included, in clear)."""
    variables = dict(os.environ)
    for name, field in type(settings).model_fields.items():
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None:
            value = ""  # unset: empty variables are ignored, so the default applies
        variables[env_name(field)] = str(value).lower() if isinstance(value, bool) else str(value)
    return variables


def is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr


def _describe(kind: type[RaeeSettings], error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = item["loc"][0] if item["loc"] else ""
        field = kind.model_fields.get(str(location))
        name = env_name(field) if field is not None else str(location or kind.__name__)
        value = item.get("input")
        shown = "" if field is not None and is_secret(field) else f" (got {str(value)[:80]!r})"
        problems.append(f"${name}: {item['msg']}{shown}" if location else str(item["msg"]))
    return "; ".join(problems)
