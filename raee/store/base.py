"""The exit store's interface: immutable task versions of exit information, keyed by embeddings.

Writers (the ingest job) build a new version of a task and publish it atomically
once complete; readers (the retrieval service) resolve a task's current version
on every request, so a newly published version is served without a restart and
a half-written one is never seen.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import numpy as np

from raee.errors import StoreError
from raee.exit_info import ExitInfo
from raee.tasks import TaskSpec


def new_version_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dt%H%M%S") + "-" + secrets.token_hex(3)


@dataclass(frozen=True)
class ExitRecord:
    """One labelled example as stored: its key vector and its exit information."""

    point_id: int
    vector: np.ndarray
    example_id: str
    text: str
    label: str
    label_index: int
    exit: ExitInfo

    def payload(self) -> dict[str, Any]:
        return {
            "exit_layers": list(self.exit.layers),
            "exit_probs": list(self.exit.probs),
            "label": self.label,
            "label_index": self.label_index,
            "text": self.text,
            "example_id": self.example_id,
        }


@dataclass(frozen=True)
class Neighbour:
    """A retrieved example: its cosine similarity to the query and its exit information."""

    point_id: int
    similarity: float
    example_id: str
    text: str
    label: str
    label_index: int
    exit: ExitInfo

    @property
    def squared_distance(self) -> float:
        """Squared L2 distance between unit vectors, as in the authors' faiss index."""
        return max(0.0, 2.0 - 2.0 * self.similarity)

    @classmethod
    def from_payload(cls, point_id: int, similarity: float, payload: dict[str, Any]) -> Neighbour:
        return cls(
            point_id=int(point_id),
            similarity=float(similarity),
            example_id=str(payload["example_id"]),
            text=str(payload["text"]),
            label=str(payload["label"]),
            label_index=int(payload["label_index"]),
            exit=ExitInfo(tuple(payload["exit_layers"]), tuple(payload["exit_probs"])),
        )


@dataclass(frozen=True)
class VersionMeta:
    """What the writer knows about the version it publishes."""

    spec: TaskSpec
    backbone_id: str
    encoder_id: str
    num_layers: int
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "backbone_id": self.backbone_id,
            "encoder_id": self.encoder_id,
            "num_layers": self.num_layers,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionMeta:
        return cls(
            spec=TaskSpec.parse(data["spec"], source="stored spec"),
            backbone_id=data["backbone_id"],
            encoder_id=data["encoder_id"],
            num_layers=int(data["num_layers"]),
            stats=dict(data.get("stats", {})),
        )


SHARDING_NEEDS_SERVER = (
    "sharded ingest needs a Qdrant server (--store-url); the embedded store has one writer"
)


@dataclass(frozen=True)
class TaskVersion:
    """A published version of a task, as readers see it."""

    task: str
    version: str
    spec: TaskSpec
    backbone_id: str
    encoder_id: str
    num_layers: int
    dim: int
    points: int
    created_at: str
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "spec": self.spec.to_dict(),
            "backbone_id": self.backbone_id,
            "encoder_id": self.encoder_id,
            "num_layers": self.num_layers,
            "dim": self.dim,
            "points": self.points,
            "created_at": self.created_at,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskVersion:
        return cls(
            task=data["task"],
            version=data["version"],
            spec=TaskSpec.parse(data["spec"], source=f"stored spec of {data['task']}"),
            backbone_id=data["backbone_id"],
            encoder_id=data["encoder_id"],
            num_layers=int(data["num_layers"]),
            dim=int(data["dim"]),
            points=int(data["points"]),
            created_at=data["created_at"],
            stats=dict(data.get("stats", {})),
        )

    @classmethod
    def build(cls, task: str, version: str, meta: VersionMeta, dim: int, points: int) -> TaskVersion:
        return cls(
            task=task,
            version=version,
            spec=meta.spec,
            backbone_id=meta.backbone_id,
            encoder_id=meta.encoder_id,
            num_layers=meta.num_layers,
            dim=dim,
            points=points,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            stats=meta.stats,
        )


@dataclass(frozen=True)
class SearchResult:
    """Neighbours of each query vector, and the version they were read from."""

    version: TaskVersion
    neighbours: list[list[Neighbour]]


class VersionWriter(ABC):
    """Builds one new version of a task. Use as a context manager: an exception discards it."""

    def __init__(self, task: str, version: str, dim: int) -> None:
        self.task = task
        self.version = version
        self.dim = dim
        self.published: TaskVersion | None = None

    @abstractmethod
    def add(self, records: Sequence[ExitRecord]) -> None:
        """Write records (idempotent: point ids are deterministic)."""

    @abstractmethod
    def publish(self, meta: VersionMeta) -> TaskVersion:
        """Make this version the task's current one atomically, then drop the previous one."""

    @abstractmethod
    def discard(self) -> None:
        """Remove everything written; the current version is untouched."""

    def mark_shard_done(self, meta: VersionMeta, shard_index: int, shard_count: int) -> None:
        """Record that one shard of a sharded ingest wrote all its rows (published later)."""
        raise StoreError(SHARDING_NEEDS_SERVER)

    def _check_vectors(self, records: Sequence[ExitRecord]) -> None:
        for record in records:
            if record.vector.shape != (self.dim,):
                raise ValueError(
                    f"vector of point {record.point_id} has shape {record.vector.shape}, want ({self.dim},)"
                )

    def __enter__(self) -> VersionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and self.published is None:
            self.discard()


class ExitStore(ABC):
    """Where exit information lives: the embedded engine or a Qdrant server."""

    #: Human-readable location for logs and summaries.
    location: str

    @abstractmethod
    def begin_version(self, task: str, dim: int, version: str | None = None) -> VersionWriter:
        """Start writing a new version (``version`` joins one started elsewhere, where supported)."""

    @abstractmethod
    def get_task(self, task: str) -> TaskVersion:
        """The task's current version; :class:`TaskNotFoundError` if none is published."""

    @abstractmethod
    def list_tasks(self) -> list[TaskVersion]:
        """Current versions of all published tasks, sorted by name."""

    @abstractmethod
    def search(self, task: str, vectors: np.ndarray, k: int) -> SearchResult:
        """The ``k`` nearest stored examples of each row of ``vectors``, in one batched query."""

    def publish_shards(self, task: str, version: str, expect_shards: int) -> TaskVersion:
        """Publish a version filled by ``expect_shards`` writers once all of them are done."""
        raise StoreError(SHARDING_NEEDS_SERVER)

    def size_bytes(self, task: str) -> int | None:
        """Bytes on disk of the task's current version, where the backend can tell."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release files and connections."""
