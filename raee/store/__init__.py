"""The exit store: exit information keyed by query embeddings, in Qdrant.

:func:`open_store` picks the backend:

* no URL: the embedded engine (``qdrant-edge``) under the data folder;
* ``http://`` / ``https://`` URL: a Qdrant server or cluster via qdrant-client;
* ``local:PATH``: qdrant-client's local mode on a folder (same client API as a
  server; used by tests, since no Qdrant server can be installed here).
"""

from __future__ import annotations

import os
from pathlib import Path

from raee.paths import raee_home
from raee.store.base import (
    ExitRecord,
    ExitStore,
    Neighbour,
    SearchResult,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskVersion,
    VersionMeta,
    VersionWriter,
)

URL_ENV = "RAEE_QDRANT_URL"
API_KEY_ENV = "RAEE_QDRANT_API_KEY"
SHARDS_ENV = "RAEE_QDRANT_SHARDS"
REPLICATION_ENV = "RAEE_QDRANT_REPLICATION"
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
]


def open_store(
    url: str | None = None,
    *,
    home: str | Path | None = None,
    api_key: str | None = None,
    exact: bool = True,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    timeout_s: int = 10,
) -> ExitStore:
    """Open the exit store named by ``url`` (else ``$RAEE_QDRANT_URL``, else embedded).

    New collections on a server get ``shard_number`` / ``replication_factor``, else
    ``$RAEE_QDRANT_SHARDS`` / ``$RAEE_QDRANT_REPLICATION``, else the server's defaults.
    """
    url = url or os.environ.get(URL_ENV) or None
    shard_number = shard_number or _int_env(SHARDS_ENV)
    replication_factor = replication_factor or _int_env(REPLICATION_ENV)
    if url is None:
        from raee.store.edge import EdgeExitStore

        return EdgeExitStore(raee_home(home), exact=exact)

    from qdrant_client import QdrantClient

    from raee.store.server import QdrantExitStore

    if url.startswith(LOCAL_PREFIX):
        client = QdrantClient(path=url.removeprefix(LOCAL_PREFIX))
    elif url.startswith(("http://", "https://")):
        key = api_key or os.environ.get(API_KEY_ENV) or None
        client = QdrantClient(url=url, api_key=key, timeout=timeout_s)
    else:
        raise ValueError(f"store_url: {url!r} must start with http://, https:// or {LOCAL_PREFIX}")
    return QdrantExitStore(
        client,
        location=url.split("@")[-1],
        exact=exact,
        shard_number=shard_number,
        replication_factor=replication_factor,
    )


def _int_env(name: str) -> int | None:
    raw = os.environ.get(name, "")
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"${name}: {raw!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"${name}: must be at least 1 (got {value})")
    return value
