"""The exit store: exit information keyed by query embeddings, in Qdrant.

:func:`open_store` picks the backend:

* no URL: the embedded engine (``qdrant-edge``) under the data folder;
* ``http://`` / ``https://`` URL: a Qdrant server or cluster via qdrant-client;
* ``local:PATH``: qdrant-client's local mode on a folder (same client API as a
  server; used by tests, since no Qdrant server can be installed here).
"""

from __future__ import annotations

from pathlib import Path

from raee.errors import StoreError, StoreUnavailableError, TaskNotFoundError
from raee.settings import StoreSettings
from raee.store.base import (
    ExitRecord,
    ExitStore,
    Neighbour,
    SearchResult,
    TaskVersion,
    VersionMeta,
    VersionWriter,
)

LOCAL_PREFIX = "local:"

__all__ = [
    "ExitRecord",
    "ExitStore",
    "Neighbour",
    "SearchResult",
    "StoreError",
    "StoreUnavailableError",
    "TaskNotFoundError",
    "TaskVersion",
    "VersionMeta",
    "VersionWriter",
    "open_store",
    "open_store_from",
]


def open_store(
    url: str | None = None,
    *,
    home: str | Path = ".raee",
    api_key: str | None = None,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    timeout_s: int = 10,
) -> ExitStore:
    """Open the exit store named by ``url``: the embedded store in ``home`` when it is empty.

    New collections on a server get ``shard_number`` / ``replication_factor``, else
    the server's defaults.
    """
    if not url:
        from raee.store.edge import EdgeExitStore

        return EdgeExitStore(Path(home).expanduser())

    from qdrant_client import QdrantClient

    from raee.store.server import QdrantExitStore

    if url.startswith(LOCAL_PREFIX):
        client = QdrantClient(path=url.removeprefix(LOCAL_PREFIX))
    elif url.startswith(("http://", "https://")):
        client = QdrantClient(url=url, api_key=api_key or None, timeout=timeout_s)
    else:
        raise ValueError(f"store_url: {url[:200]!r} must start with http://, https:// or {LOCAL_PREFIX}")
    return QdrantExitStore(
        client,
        location=url.split("@")[-1],
        shard_number=shard_number,
        replication_factor=replication_factor,
    )


def open_store_from(settings: StoreSettings) -> ExitStore:
    """Open the store the settings name (``RAEE_QDRANT_URL``, ``RAEE_HOME``, ...)."""
    return open_store(
        settings.store_url,
        home=settings.home,
        api_key=settings.qdrant_api_key.get_secret_value(),
        shard_number=settings.qdrant_shards,
        replication_factor=settings.qdrant_replication,
    )
