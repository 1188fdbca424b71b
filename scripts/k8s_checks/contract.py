"""What the image and its ``raee`` commands are: the contract the manifests are checked against.

Each command's configuration keys (``RAEE_*``), ports and flags, mirrored from the code
(``--source-check`` compares the services' keys and defaults with ``raee/serving/config.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

IMAGE_REPO = "ghcr.io/raee-serve/raee"
QDRANT_REPO = "qdrant/qdrant"
BAKED_CACHE_DIR = "/opt/raee/cache"
BAKED_TAG_SUFFIX = "-baked"

# Environment any container of the image may set (runtime, not RAEE configuration).
RUNTIME_ENV = frozenset(
    {
        "HOME",
        "TMPDIR",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "PYTHONUNBUFFERED",
    }
)


@dataclass(frozen=True)
class Port:
    env: str
    default: int
    name: str  # the containerPort name the manifests must use


@dataclass(frozen=True)
class Command:
    """What one ``raee`` command reads: its configuration keys, ports and flags."""

    words: tuple[str, ...]
    env: frozenset[str]
    required_env: frozenset[str] = frozenset()
    grpc: Port | None = None
    metrics: Port | None = None
    health_service: str | None = None
    flags: Mapping[str, bool] = field(default_factory=dict)  # flag -> takes a value
    required_flags: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return "raee " + " ".join(self.words)

    @property
    def serves(self) -> bool:
        return self.grpc is not None


_STORE = frozenset({"RAEE_QDRANT_URL", "RAEE_QDRANT_API_KEY"})
# `raee ingest --data s3://...`: the standard variables boto3 reads.
_OBJECT_STORE = frozenset(
    {
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    }
)
COMMANDS: dict[tuple[str, ...], Command] = {
    c.words: c
    for c in (
        Command(
            words=("serve", "retrieval"),
            env=_STORE
            | {
                "RAEE_RETRIEVAL_PORT",
                "RAEE_RETRIEVAL_METRICS_PORT",
                "RAEE_ENCODER",
                "RAEE_DEFAULT_K",
                "RAEE_MAX_K",
                "RAEE_MAX_TEXT_CHARS",
                "RAEE_MAX_BATCH_REQUESTS",
                "RAEE_CACHE_DIR",
                "RAEE_GRACE_S",
                "RAEE_MAX_CONNECTION_AGE_S",
                "RAEE_MAX_CONNECTION_AGE_GRACE_S",
                "RAEE_LOG_LEVEL",
            },
            required_env=_STORE | {"RAEE_CACHE_DIR"},
            grpc=Port("RAEE_RETRIEVAL_PORT", 50051, "grpc"),
            metrics=Port("RAEE_RETRIEVAL_METRICS_PORT", 9101, "metrics"),
            health_service="raee.v1.RetrievalService",
        ),
        Command(
            words=("serve", "inference"),
            env=frozenset(
                {
                    "RAEE_INFERENCE_PORT",
                    "RAEE_INFERENCE_METRICS_PORT",
                    "RAEE_RETRIEVAL_ADDR",
                    "RAEE_BACKBONE",
                    "RAEE_MAX_BATCH",
                    "RAEE_MAX_WAIT_MS",
                    "RAEE_MAX_QUEUE",
                    "RAEE_RETRIEVAL_TIMEOUT_MS",
                    "RAEE_TASK_TTL_S",
                    "RAEE_MAX_TEXT_CHARS",
                    "RAEE_MAX_BATCH_REQUESTS",
                    "RAEE_CACHE_DIR",
                    "RAEE_GRACE_S",
                    "RAEE_MAX_CONNECTION_AGE_S",
                    "RAEE_MAX_CONNECTION_AGE_GRACE_S",
                    "RAEE_LOG_LEVEL",
                }
            ),
            required_env=frozenset({"RAEE_CACHE_DIR", "RAEE_RETRIEVAL_ADDR"}),
            grpc=Port("RAEE_INFERENCE_PORT", 50052, "grpc"),
            metrics=Port("RAEE_INFERENCE_METRICS_PORT", 9102, "metrics"),
            health_service="raee.v1.InferenceService",
        ),
        Command(
            words=("prepare",),
            env=frozenset({"RAEE_BACKBONE", "RAEE_ENCODER", "RAEE_CACHE_DIR", "RAEE_LOG_LEVEL"}),
            required_env=frozenset({"RAEE_CACHE_DIR"}),
        ),
        Command(
            words=("ingest",),
            env=_STORE
            | {
                "RAEE_QDRANT_SHARDS",
                "RAEE_QDRANT_REPLICATION",
                "RAEE_BACKBONE",
                "RAEE_ENCODER",
                "RAEE_CACHE_DIR",
                "RAEE_LOG_LEVEL",
            }
            | _OBJECT_STORE,
            required_env=_STORE | {"RAEE_CACHE_DIR"},
            flags={
                "--task-spec": True,
                "--data": True,
                "--data-format": True,
                "--store-url": True,
                "--version": True,
                "--shard-index": True,
                "--shard-count": True,
                "--no-publish": False,
                "--backbone": True,
                "--encoder": True,
                "--batch-size": True,
                "--skip-invalid": False,
                "--no-progress": False,
            },
            required_flags=frozenset({"--task-spec", "--data"}),
        ),
        Command(
            words=("publish",),
            env=_STORE | {"RAEE_LOG_LEVEL"},
            required_env=_STORE,
            flags={"--task": True, "--version": True, "--expect-shards": True, "--store-url": True},
            required_flags=frozenset({"--task", "--version", "--expect-shards"}),
        ),
    )
}
INT_ENV = {
    "RAEE_RETRIEVAL_PORT",
    "RAEE_RETRIEVAL_METRICS_PORT",
    "RAEE_INFERENCE_PORT",
    "RAEE_INFERENCE_METRICS_PORT",
    "RAEE_MAX_BATCH",
    "RAEE_MAX_QUEUE",
    "RAEE_DEFAULT_K",
    "RAEE_MAX_K",
    "RAEE_MAX_TEXT_CHARS",
    "RAEE_MAX_BATCH_REQUESTS",
    "RAEE_QDRANT_SHARDS",
    "RAEE_QDRANT_REPLICATION",
}
FLOAT_ENV = {
    "RAEE_GRACE_S",
    "RAEE_MAX_WAIT_MS",
    "RAEE_RETRIEVAL_TIMEOUT_MS",
    "RAEE_TASK_TTL_S",
    "RAEE_MAX_CONNECTION_AGE_S",
    "RAEE_MAX_CONNECTION_AGE_GRACE_S",
}

LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
DEFAULT_GRACE_S = 10
