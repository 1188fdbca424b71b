"""Embedded exit store: the Qdrant engine in-process (``qdrant-edge``), one shard folder a version.

Layout under the data folder (``RAEE_HOME``)::

    tasks/<task>/CURRENT.json            the published version and its metadata
    tasks/<task>/versions/<version>/     one immutable edge shard per version
    tasks/<task>/.ingest.lock            held by the one writer of the task

Publishing writes ``CURRENT.json`` under a temporary name and renames it over
the old one (atomic on POSIX), so readers see the old version or the new one,
never a mix. A version's index follows :mod:`raee.store.index`: exact search
below the policy's threshold, HNSW over int8-quantised vectors from it on; the
optimizer builds the graph before the version is published, so a published
large version is never searched by fallback scan. Shards are created without a write-ahead log: a version is
immutable once published (it is flushed first), and without the WAL's lock any
number of reader processes can open the same shard.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import qdrant_edge as qe

from raee.errors import StoreError, TaskNotFoundError
from raee.store.base import (
    SHARDING_NEEDS_SERVER,
    ExitRecord,
    ExitStore,
    SearchResult,
    TaskVersion,
    VersionMeta,
    VersionWriter,
    new_version_id,
)
from raee.store.base import Neighbour as _Neighbour
from raee.store.index import DEFAULT_POLICY, IndexPolicy, threshold_kb
from raee.tasks import check_task_name

logger = logging.getLogger(__name__)

MANIFEST = "CURRENT.json"
# Training texts are in the store: only the owner may read it, whatever the umask.
PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class EdgeExitStore(ExitStore):
    """``exact``: force exact (True) or index (False) search; None follows ``policy`` by version size."""

    def __init__(
        self, home: Path, *, exact: bool | None = None, policy: IndexPolicy = DEFAULT_POLICY
    ) -> None:
        self.home = Path(home)
        self.root = self.home / "tasks"
        self.location = f"embedded:{self.home.resolve()}"
        self.exact = exact
        self.policy = policy
        self._loaded: dict[str, _LoadedVersion] = {}
        self._lock = threading.Lock()

    # -- writing --------------------------------------------------------------------------

    def begin_version(self, task: str, dim: int, version: str | None = None) -> VersionWriter:
        if version is not None:
            raise StoreError(SHARDING_NEEDS_SERVER)
        task_dir = self.root / check_task_name(task)
        self.home.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        for folder in (self.root, task_dir, task_dir / "versions"):
            folder.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        lock = _acquire_writer_lock(task_dir / ".ingest.lock", task)
        try:
            _remove_unpublished(task_dir)
            return _EdgeVersionWriter(task_dir, new_version_id(), dim, lock, self.policy)
        except BaseException:
            lock.close()
            raise

    # -- reading --------------------------------------------------------------------------

    def get_task(self, task: str) -> TaskVersion:
        return self._current(task).info

    def list_tasks(self) -> list[TaskVersion]:
        """Every task with a readable manifest; a damaged one is logged and skipped, not fatal."""
        if not self.root.is_dir():
            return []
        names = sorted(p.name for p in self.root.iterdir() if (p / MANIFEST).is_file())
        versions: list[TaskVersion] = []
        for name in names:
            try:
                versions.append(_read_manifest(self.root / name / MANIFEST, name))
            except StoreError as error:
                logger.warning("ListTasks skips %s", error)
        return versions

    def search(self, task: str, vectors: np.ndarray, k: int) -> SearchResult:
        loaded = self._current(task)
        try:
            hits = loaded.query(vectors, k, self._params(loaded.info))
        except Exception:
            # The version may have been replaced and removed since we resolved it.
            self._loaded.pop(task, None)
            loaded = self._current(task)
            try:
                hits = loaded.query(vectors, k, self._params(loaded.info))
            except Exception as exc:
                self._loaded.pop(task, None)
                raise StoreError(
                    f"task {task!r}: version {loaded.info.version} cannot be searched "
                    f"({type(exc).__name__}); re-ingest the task"
                ) from exc
        return SearchResult(version=loaded.info, neighbours=hits)

    def _params(self, info: TaskVersion) -> Any:
        exact = self.policy.exact_for(info.points) if self.exact is None else self.exact
        return search_params(self.policy, exact=exact)

    def size_bytes(self, task: str) -> int | None:
        info = self.get_task(task)
        folder = self.root / task / "versions" / info.version
        # Allocated blocks, not apparent sizes: the engine preallocates sparse mmap files.
        return sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())

    def close(self) -> None:
        with self._lock:
            self._loaded.clear()

    def _current(self, task: str) -> _LoadedVersion:
        manifest = self.root / check_task_name(task) / MANIFEST
        try:
            stat = manifest.stat()
        except FileNotFoundError:
            raise TaskNotFoundError(task) from None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        loaded = self._loaded.get(task)
        if loaded is not None and loaded.key == key:
            return loaded
        with self._lock:
            loaded = self._loaded.get(task)
            if loaded is None or loaded.key != key:
                info = _read_manifest(manifest, task)
                folder = manifest.parent / "versions" / info.version
                if not folder.is_dir():
                    raise StoreError(
                        f"task {task!r}: the published version {info.version} is missing from the store; "
                        "re-ingest the task"
                    )
                try:
                    shard = qe.EdgeShard.load(str(folder))
                except Exception as exc:  # the engine raises plain exceptions on a damaged shard
                    raise StoreError(
                        f"task {task!r}: version {info.version} cannot be opened ({type(exc).__name__}); "
                        "re-ingest the task"
                    ) from exc
                loaded = _LoadedVersion(key=key, info=info, shard=shard)
                self._loaded[task] = loaded
                logger.info("serving %s version %s (%d points)", task, info.version, info.points)
        return loaded


@dataclass(frozen=True)
class _LoadedVersion:
    key: tuple[int, int, int]
    info: TaskVersion
    shard: Any  # qdrant_edge.EdgeShard

    def query(self, vectors: np.ndarray, k: int, params: Any) -> list[list[_Neighbour]]:
        requests = [
            qe.QueryRequest(limit=k, query=qe.Query.Nearest(row.tolist()), with_payload=True, params=params)
            for row in np.asarray(vectors, dtype=np.float32)
        ]
        batches = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [
            [_Neighbour.from_payload(int(p.id), p.score, p.payload or {}) for p in points]
            for points in batches
        ]


def search_params(policy: IndexPolicy, *, exact: bool) -> Any:
    """Exact search reads the float vectors only; index search rescores quantised candidates."""
    if exact:
        return qe.SearchParams(exact=True, quantization=qe.QuantizationSearchParams(ignore=True))
    quantization = qe.QuantizationSearchParams(rescore=policy.rescore, oversampling=policy.oversampling)
    return qe.SearchParams(hnsw_ef=policy.hnsw_ef, quantization=quantization if policy.quantized else None)


def shard_config(dim: int, policy: IndexPolicy) -> Any:
    """Segments of ``policy.threshold`` points or more get an HNSW graph (and int8 vectors)."""
    kb = threshold_kb(policy.threshold, dim)
    quantization = (
        qe.ScalarQuantizationConfig(type=qe.ScalarType.Int8, quantile=policy.quantile, always_ram=True)
        if policy.quantized
        else None
    )
    return qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=qe.HnswIndexConfig(
            m=policy.hnsw_m, ef_construct=policy.hnsw_ef_construct, full_scan_threshold=kb
        ),
        quantization_config=quantization,
        optimizers=qe.EdgeOptimizersConfig(indexing_threshold=kb),
        wal_enabled=False,
    )


class _EdgeVersionWriter(VersionWriter):
    def __init__(self, task_dir: Path, version: str, dim: int, lock: IO[bytes], policy: IndexPolicy) -> None:
        super().__init__(task_dir.name, version, dim)
        self.task_dir = task_dir
        self.folder = task_dir / "versions" / version
        self._lock = lock
        self._shard: Any = qe.EdgeShard.create(str(self.folder), shard_config(dim, policy))

    def add(self, records: Sequence[ExitRecord]) -> None:
        if not records:
            return
        self._check_vectors(records)
        points = [qe.Point(r.point_id, r.vector.tolist(), r.payload()) for r in records]
        self._shard.update(qe.UpdateOperation.upsert_points(points))

    def publish(self, meta: VersionMeta) -> TaskVersion:
        self._shard.flush()
        self._shard.optimize()  # blocks until the HNSW graph of a large version is built
        shard_info = self._shard.info()
        points = shard_info.points_count
        logger.info(
            "version %s: %d points, %d indexed", self.version, points, shard_info.indexed_vectors_count
        )
        self._shard.close()
        _make_private(self.folder)
        info = TaskVersion.build(self.task, self.version, meta, self.dim, points)
        _write_atomically(self.task_dir / MANIFEST, json.dumps(info.to_dict(), indent=2))
        self.published = info
        _remove_unpublished(self.task_dir)
        self._lock.close()
        return info

    def discard(self) -> None:
        try:
            self._shard.close()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            self._lock.close()


def _acquire_writer_lock(path: Path, task: str) -> IO[bytes]:
    handle = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE), "ab")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StoreError(f"task {task!r}: another ingest is writing it right now") from None
    return handle


def _remove_unpublished(task_dir: Path) -> None:
    """Delete every version folder but the published one (only under the writer lock)."""
    manifest = task_dir / MANIFEST
    try:
        current = _read_manifest(manifest, task_dir.name).version if manifest.is_file() else None
    except StoreError:
        current = None  # a damaged manifest: this ingest publishes a new one
    for folder in (task_dir / "versions").iterdir():
        if folder.name != current:
            shutil.rmtree(folder, ignore_errors=True)


def _make_private(folder: Path) -> None:
    """0700 folders and 0600 files under ``folder`` (the engine creates them under the umask)."""
    folder.chmod(PRIVATE_DIR)
    for path in folder.rglob("*"):
        if path.is_symlink():
            continue
        path.chmod(PRIVATE_DIR if path.is_dir() else PRIVATE_FILE)


def _read_manifest(path: Path, task: str) -> TaskVersion:
    """The manifest of ``task``; any damage is a :class:`StoreError` naming the task, never a crash."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        info = TaskVersion.from_dict(data)
    except FileNotFoundError:
        raise TaskNotFoundError(task) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:200]
        raise StoreError(
            f"task {task!r}: its manifest {MANIFEST} is damaged ({reason}); re-ingest the task"
        ) from exc
    version = info.version
    if info.task != task or not 0 < len(version) <= 64 or "/" in version or version.startswith("."):
        raise StoreError(f"task {task!r}: its manifest {MANIFEST} names another task or a bad version")
    return info


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
