"""Exit store on a Qdrant server or cluster, through qdrant-client.

Each version is a collection ``raee-<task>--<version>`` whose collection
metadata holds the version's description; the alias ``raee-<task>`` points at
the current one. Publishing swaps the alias in one atomic request, then deletes
the previous collection. Several writers (an Indexed Job's pods) may fill the
same version by passing its id; the one that publishes does so after all of them
finished. Collections get the index settings of :mod:`raee.store.index`, and a
version is searched exactly or through HNSW by its size, as in the embedded
store. The same code runs against qdrant-client's local mode (``path=``),
which is what the tests use: no Qdrant server can be installed here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from qdrant_client import QdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

from raee.errors import StoreError, StoreUnavailableError, TaskNotFoundError
from raee.exit_info import ExitStats
from raee.store.base import (
    ExitRecord,
    ExitStore,
    Neighbour,
    SearchResult,
    TaskVersion,
    VersionMeta,
    VersionWriter,
    new_version_id,
)
from raee.store.index import DEFAULT_POLICY, IndexPolicy, threshold_kb
from raee.tasks import check_task_name

logger = logging.getLogger(__name__)

PREFIX = "raee-"
SEPARATOR = "--"
META_KEY = "raee"
T = TypeVar("T")


def alias_name(task: str) -> str:
    return PREFIX + task


def collection_name(task: str, version: str) -> str:
    return f"{PREFIX}{task}{SEPARATOR}{version}"


def shards_collection(task: str, version: str) -> str:
    """One point per finished shard of a sharded ingest, removed on publish."""
    return f"{collection_name(task, version)}{SEPARATOR}shards"


class QdrantExitStore(ExitStore):
    """``client`` is any :class:`QdrantClient`: remote (``url=``) or local mode (``path=``)."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        location: str,
        exact: bool | None = None,
        policy: IndexPolicy = DEFAULT_POLICY,
        shard_number: int | None = None,
        replication_factor: int | None = None,
    ) -> None:
        """``exact``: force exact (True) or index (False) search; None follows ``policy`` by size."""
        self.client = client
        self.location = location
        self.exact = exact
        self.policy = policy
        self.shard_number = shard_number
        self.replication_factor = replication_factor
        self._info_by_collection: dict[str, TaskVersion] = {}

    def begin_version(self, task: str, dim: int, version: str | None = None) -> VersionWriter:
        check_task_name(task)
        shared = version is not None  # several writers (an Indexed Job's pods) fill this version
        version = version or new_version_id()
        name = collection_name(task, version)
        metadata = {META_KEY: {"task": task, "state": "writing"}}
        self._create(
            name,
            models.VectorParams(size=dim, distance=models.Distance.COSINE),
            metadata,
            shared,
            indexed=True,
        )
        return _QdrantVersionWriter(self, task, version, dim, shared=shared)

    def publish_shards(self, task: str, version: str, expect_shards: int) -> TaskVersion:
        markers = _call(
            lambda: (
                self.client.scroll(shards_collection(task, version), limit=expect_shards + 1)[0]
                if self.client.collection_exists(shards_collection(task, version))
                else []
            )
        )
        done = sorted(int(m.id) for m in markers)
        if done != list(range(expect_shards)):
            raise StoreError(
                f"task {task!r} version {version}: shards done {done}, expected 0..{expect_shards - 1}; "
                "wait for the ingest Job to complete"
            )
        payloads = [m.payload or {} for m in markers]
        if {p.get("shard_count") for p in payloads} != {expect_shards}:
            raise StoreError(f"version {version}: shards were written with another shard count")
        metas = [VersionMeta.from_dict(p["meta"]) for p in payloads]
        first = metas[0]
        if any(
            (m.spec, m.backbone_id, m.encoder_id) != (first.spec, first.backbone_id, first.encoder_id)
            for m in metas
        ):
            raise StoreError(f"version {version}: shards disagree on the task spec, backbone or encoder")
        stats = ExitStats.from_counts(metas[0].stats["counts"])
        for meta in metas[1:]:
            stats.merge(ExitStats.from_counts(meta.stats["counts"]))
        combined = VersionMeta(
            first.spec,
            first.backbone_id,
            first.encoder_id,
            first.num_layers,
            {**first.stats, **stats.to_dict(), "shards": expect_shards},
        )
        vectors = _call(
            lambda: self.client.get_collection(collection_name(task, version)).config.params.vectors
        )
        if not isinstance(vectors, models.VectorParams):
            raise StoreError(f"version {version}: unexpected vector configuration {vectors!r}")
        writer = _QdrantVersionWriter(self, task, version, vectors.size, shared=True)
        info = writer.publish(combined)
        if info.points != stats.examples:
            raise StoreError(
                f"version {version}: {info.points} points stored, shards reported {stats.examples}"
            )
        _delete_collection(self.client, shards_collection(task, version))
        return info

    def _create(
        self,
        name: str,
        vectors: models.VectorParams,
        metadata: dict[str, Any],
        shared: bool,
        *,
        indexed: bool = False,
    ) -> None:
        if shared and _call(lambda: self.client.collection_exists(name)):
            return
        index = collection_index_config(self.policy, vectors.size) if indexed else {}
        try:
            _call(
                lambda: self.client.create_collection(
                    name,
                    vectors_config=vectors,
                    shard_number=self.shard_number,
                    replication_factor=self.replication_factor,
                    metadata=metadata,
                    **index,
                )
            )
        except (UnexpectedResponse, ValueError):
            # Another writer of the same shared version created it first.
            if not (shared and _call(lambda: self.client.collection_exists(name))):
                raise

    def get_task(self, task: str) -> TaskVersion:
        return self._info(self._resolve(task), task)

    def list_tasks(self) -> list[TaskVersion]:
        aliases = _call(lambda: self.client.get_aliases().aliases)
        current = sorted(
            (a.alias_name.removeprefix(PREFIX), a.collection_name)
            for a in aliases
            if a.alias_name.startswith(PREFIX)
        )
        return [self._info(collection, task) for task, collection in current]

    def search(self, task: str, vectors: np.ndarray, k: int) -> SearchResult:
        for attempt in range(2):
            collection = self._resolve(task)
            info = self._info(collection, task)
            exact = self.policy.exact_for(info.points) if self.exact is None else self.exact
            try:
                hits = self._query(collection, vectors, k, search_params(self.policy, exact=exact))
            except UnexpectedResponse as exc:
                # A version swapped and deleted between resolving and querying: resolve again.
                if exc.status_code != 404 or attempt:
                    raise StoreError(f"search in {collection}: {exc}") from exc
                continue
            return SearchResult(version=info, neighbours=hits)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        self.client.close()

    # -- internals ----------------------------------------------------------------------

    def _resolve(self, task: str) -> str:
        alias = alias_name(check_task_name(task))
        for entry in _call(lambda: self.client.get_aliases().aliases):
            if entry.alias_name == alias:
                return str(entry.collection_name)
        raise TaskNotFoundError(task)

    def _info(self, collection: str, task: str) -> TaskVersion:
        cached = self._info_by_collection.get(collection)
        if cached is None:
            metadata = _call(lambda: self.client.get_collection(collection).config.metadata) or {}
            description = metadata.get(META_KEY, {}).get("version")
            if description is None:
                raise StoreError(f"collection {collection} of task {task!r} has no RAEE metadata")
            cached = TaskVersion.from_dict(description)
            self._info_by_collection[collection] = cached
        return cached

    def _query(
        self, collection: str, vectors: np.ndarray, k: int, params: models.SearchParams
    ) -> list[list[Neighbour]]:
        requests = [
            models.QueryRequest(query=row.tolist(), limit=k, with_payload=True, params=params)
            for row in np.asarray(vectors, dtype=np.float32)
        ]
        responses = _call(lambda: self.client.query_batch_points(collection, requests=requests))
        return [
            [Neighbour.from_payload(int(p.id), p.score, p.payload or {}) for p in response.points]
            for response in responses
        ]


def collection_index_config(policy: IndexPolicy, dim: int) -> dict[str, Any]:
    """``create_collection`` arguments giving a version the index of the embedded store."""
    kb = threshold_kb(policy.threshold, dim)
    quantization = (
        models.ScalarQuantization(
            scalar=models.ScalarQuantizationConfig(
                type=models.ScalarType.INT8, quantile=policy.quantile, always_ram=True
            )
        )
        if policy.quantized
        else None
    )
    return {
        "hnsw_config": models.HnswConfigDiff(
            m=policy.hnsw_m, ef_construct=policy.hnsw_ef_construct, full_scan_threshold=kb
        ),
        "optimizers_config": models.OptimizersConfigDiff(indexing_threshold=kb),
        "quantization_config": quantization,
    }


def search_params(policy: IndexPolicy, *, exact: bool) -> models.SearchParams:
    """Exact search reads the float vectors only; index search rescores quantised candidates."""
    if exact:
        return models.SearchParams(exact=True, quantization=models.QuantizationSearchParams(ignore=True))
    quantization = models.QuantizationSearchParams(rescore=policy.rescore, oversampling=policy.oversampling)
    return models.SearchParams(
        hnsw_ef=policy.hnsw_ef, quantization=quantization if policy.quantized else None
    )


class _QdrantVersionWriter(VersionWriter):
    def __init__(self, store: QdrantExitStore, task: str, version: str, dim: int, *, shared: bool) -> None:
        super().__init__(task, version, dim)
        self.store = store
        self.shared = shared
        self.collection = collection_name(task, version)

    def mark_shard_done(self, meta: VersionMeta, shard_index: int, shard_count: int) -> None:
        if not self.shared or not 0 <= shard_index < shard_count:
            raise StoreError("mark_shard_done needs a shared version and 0 <= shard_index < shard_count")
        name = shards_collection(self.task, self.version)
        self.store._create(name, models.VectorParams(size=1, distance=models.Distance.DOT), {}, True)
        marker = models.PointStruct(
            id=shard_index,
            vector=[1.0],
            payload={"shard_count": shard_count, "meta": meta.to_dict()},
        )
        client = self.store.client
        _call(lambda: client.upsert(name, points=[marker], wait=True))

    def add(self, records: Sequence[ExitRecord]) -> None:
        if not records:
            return
        self._check_vectors(records)
        points = [
            models.PointStruct(id=r.point_id, vector=r.vector.tolist(), payload=r.payload()) for r in records
        ]
        client = self.store.client
        _call(lambda: client.upsert(self.collection, points=points, wait=True))

    def publish(self, meta: VersionMeta) -> TaskVersion:
        client = self.store.client
        points = _call(lambda: client.count(self.collection, exact=True).count)
        info = TaskVersion.build(self.task, self.version, meta, self.dim, points)
        metadata = {META_KEY: {"task": self.task, "state": "published", "version": info.to_dict()}}
        _call(lambda: client.update_collection(self.collection, metadata=metadata))
        alias = alias_name(self.task)
        previous = [
            a.collection_name for a in _call(lambda: client.get_aliases().aliases) if a.alias_name == alias
        ]
        operations: list[Any] = [
            models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)) for _ in previous
        ]
        operations.append(
            models.CreateAliasOperation(
                create_alias=models.CreateAlias(collection_name=self.collection, alias_name=alias)
            )
        )
        _call(lambda: client.update_collection_aliases(change_aliases_operations=operations))
        self.published = info
        for old in previous:
            if old != self.collection:
                _delete_collection(client, old)
        return info

    def discard(self) -> None:
        if self.shared:
            return  # other writers' rows live here too; a retried shard rewrites the same ids
        _delete_collection(self.store.client, self.collection)


def _delete_collection(client: QdrantClient, name: str) -> None:
    _call(lambda: client.delete_collection(name))


def _call(operation: Callable[[], T]) -> T:
    """Run a client call, turning connection failures into :class:`StoreUnavailableError`."""
    try:
        return operation()
    except (ResponseHandlingException, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailableError(f"Qdrant is unreachable: {exc}") from exc
