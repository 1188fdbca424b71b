"""The worker's view of the published tasks: what ListTasks, GetTask and the OIP model calls answer.

Tasks are resolved through the retrieval service (the worker has no store of its
own), and only tasks ingested with this worker's backbone count as served: others
are FAILED_PRECONDITION, as in Classify. Specs are cached for ``ttl_s`` so that
Open Inference Protocol calls can name the labels without a round trip each.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from raee.errors import BackboneMismatchError, VersionNotFoundError
from raee.tasks import TaskSpec
from raee.v1 import common_pb2
from raee.wire import common
from raee.wire.retrieval import RetrievalClient
from raee.wire.validate import require_task


@dataclass(frozen=True)
class ServedTask:
    name: str
    version: str
    spec: TaskSpec
    fetched_at: float


class TaskCatalog:
    def __init__(self, retrieval: RetrievalClient, backbone_id: str, *, ttl_s: float) -> None:
        self.retrieval = retrieval
        self.backbone_id = backbone_id
        self.ttl_s = ttl_s
        self._cache: dict[str, ServedTask] = {}

    async def info(self, name: str) -> common_pb2.TaskInfo:
        """The task's current version; NOT_FOUND or FAILED_PRECONDITION as Classify would answer."""
        info = await self.retrieval.task_info(require_task(name))
        self._check_backbone(info)
        self._cache[name] = ServedTask(
            name, info.version, common.task_spec(info.spec, f"task {name}"), time.monotonic()
        )
        return info

    async def infos(self) -> list[common_pb2.TaskInfo]:
        """The published tasks this worker can classify."""
        return [info for info in await self.retrieval.task_infos() if info.backbone_id == self.backbone_id]

    async def task(self, name: str, version: str = "") -> ServedTask:
        """A served task (cached for ``ttl_s``), refreshed when ``version`` is not the cached one."""
        cached = self._cache.get(name)
        fresh = cached is not None and time.monotonic() - cached.fetched_at < self.ttl_s
        if cached is None or not fresh or (version and version != cached.version):
            await self.info(name)
            cached = self._cache[name]
        if version and version != cached.version:
            raise VersionNotFoundError(name, version, cached.version)
        return cached

    def _check_backbone(self, info: common_pb2.TaskInfo) -> None:
        if info.backbone_id != self.backbone_id:
            raise BackboneMismatchError(
                f"task {info.task!r} was ingested with backbone {info.backbone_id}; "
                f"this worker serves {self.backbone_id}"
            )
