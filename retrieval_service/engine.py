"""Exit distributions for queries: embed, search the exit store, apply the exit rule.

Blocking code (the encoder and the store); the servicer runs it off the event loop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from raee.encoder import QueryEncoder
from raee.errors import EncoderMismatchError, InvalidArgumentError
from raee.exit_rule import choose_exit
from raee.store import ExitStore, TaskVersion
from raee.wire.retrieval import ExitAnswer, ExitQuery


class RetrievalEngine:
    def __init__(self, store: ExitStore, encoder: QueryEncoder) -> None:
        self.store = store
        self.encoder = encoder

    def answer(self, queries: Sequence[ExitQuery]) -> list[ExitAnswer | Exception]:
        """One answer (or the error of that query) per query, in order.

        All texts are embedded in one encoder batch; each task's queries are one
        batched store search.
        """
        results: list[ExitAnswer | Exception | None] = [None] * len(queries)
        by_task: dict[str, list[int]] = defaultdict(list)
        for index, query in enumerate(queries):
            by_task[query.task].append(index)
        versions: dict[str, TaskVersion] = {}
        for task, indices in by_task.items():
            try:
                versions[task] = self._check_version(task)
            except Exception as error:
                for index in indices:
                    results[index] = error
        live = [i for i, q in enumerate(queries) if q.task in versions]

        started = time.perf_counter()
        vectors = self._vectors([queries[i] for i in live], versions, results, live)
        encode_ms = 1000 * (time.perf_counter() - started)
        for task, indices in by_task.items():
            wanted = [i for i in indices if i in vectors]
            if not wanted:
                continue
            try:
                self._search(task, wanted, queries, vectors, results, encode_ms / max(len(live), 1))
            except Exception as error:
                for index in wanted:
                    results[index] = error
        return [r if r is not None else RuntimeError("query was not answered") for r in results]

    def _check_version(self, task: str) -> TaskVersion:
        version = self.store.get_task(task)
        if version.encoder_id != self.encoder.id:
            raise EncoderMismatchError(
                f"task {task!r} was ingested with encoder {version.encoder_id}, "
                f"this service runs {self.encoder.id}: re-ingest it (raee ingest) with this encoder"
            )
        return version

    def _vectors(
        self,
        queries: list[ExitQuery],
        versions: dict[str, TaskVersion],
        results: list[ExitAnswer | Exception | None],
        positions: list[int],
    ) -> dict[int, np.ndarray]:
        vectors: dict[int, np.ndarray] = {}
        to_encode: list[tuple[int, str]] = []
        for position, query in zip(positions, queries, strict=True):
            if query.embedding is not None:
                dim = versions[query.task].dim
                if query.embedding.shape != (dim,):
                    results[position] = InvalidArgumentError(
                        "embedding", f"has {query.embedding.size} values, the task's keys have {dim}"
                    )
                    continue
                norm = float(np.linalg.norm(query.embedding.astype(np.float64)))
                if not np.isfinite(norm) or norm == 0.0:
                    results[position] = InvalidArgumentError("embedding", "must be finite and non-zero")
                    continue
                vectors[position] = (query.embedding.astype(np.float64) / norm).astype(np.float32)
            else:
                assert query.text is not None
                to_encode.append((position, versions[query.task].spec.key_text(query.text)))
        if to_encode:
            encoded = self.encoder.encode([text for _, text in to_encode])
            for (position, _), vector in zip(to_encode, encoded, strict=True):
                vectors[position] = vector
        return vectors

    def _search(
        self,
        task: str,
        indices: list[int],
        queries: Sequence[ExitQuery],
        vectors: dict[int, np.ndarray],
        results: list[ExitAnswer | Exception | None],
        encode_ms_each: float,
    ) -> None:
        k = max(queries[i].k for i in indices)
        started = time.perf_counter()
        found = self.store.search(task, np.stack([vectors[i] for i in indices]), k)
        search_ms = 1000 * (time.perf_counter() - started) / len(indices)
        for index, neighbours in zip(indices, found.neighbours, strict=True):
            started = time.perf_counter()
            mine = neighbours[: queries[index].k]
            decision = choose_exit(mine, found.version.num_layers)
            timing = {
                "encode_ms": encode_ms_each if queries[index].text is not None else 0.0,
                "search_ms": search_ms,
                "aggregate_ms": 1000 * (time.perf_counter() - started),
            }
            results[index] = ExitAnswer(decision, mine, found.version, timing)
