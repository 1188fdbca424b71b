"""The ingest job: labelled examples in, one new published version of the task out.

For each example the backbone runs once over all exits (one batched forward pass,
stopped after the last layer, before the vocabulary projection), the correct
exits become the exit information, and the prompt is embedded as the key. Batches
are formed over examples sorted by prompt length so that padding stays small.
Records stream into a new version, which is published only once all are written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from raee.backbone import Backbone, TaskProbe
from raee.data import DataError, Example, RowError
from raee.encoder import QueryEncoder
from raee.exit_info import ExitInfo, ExitStats
from raee.store import ExitRecord, ExitStore, TaskVersion, VersionMeta
from raee.tasks import TaskSpec

DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class Shard:
    """This writer's part of a sharded ingest: rows with ``row index % count == index``."""

    version: str
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard_index: {self.index} is outside 0..{self.count - 1}")


@dataclass
class IngestResult:
    task: str
    version_id: str
    version: TaskVersion | None  # None for a shard: published later by ``raee publish``
    stats: ExitStats
    seconds: float
    skipped: int
    store_bytes: int | None
    location: str
    backbone_id: str
    encoder_id: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def examples_per_second(self) -> float:
        return self.stats.examples / self.seconds if self.seconds > 0 else 0.0


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[np.ndarray]:
    """Indices grouped into batches of similar length (stable, so the order is deterministic)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def check_prompt_lengths(
    examples: Sequence[Example], lengths: Sequence[int], limit: int, path: Path
) -> tuple[list[Example], list[RowError]]:
    """The examples whose prompt fits ``limit`` tokens (re-indexed), and a ``file:line`` error for each other.

    Run with the tokenizer alone, before the backbone loads, so that a bad file is
    reported in seconds and ``--skip-invalid`` can skip those rows like any other.
    """
    kept: list[Example] = []
    errors: list[RowError] = []
    for example, length in zip(examples, lengths, strict=True):
        if length > limit:
            errors.append(
                RowError(
                    path, example.line, f"the prompt is {length} tokens, more than the backbone's {limit}"
                )
            )
        else:
            kept.append(dataclasses.replace(example, index=len(kept)))
    return kept, errors


def run_ingest(
    spec: TaskSpec,
    examples: Sequence[Example],
    *,
    backbone: Backbone,
    encoder: QueryEncoder,
    store: ExitStore,
    batch_size: int = DEFAULT_BATCH_SIZE,
    skipped: int = 0,
    progress: bool = True,
    extra_stats: dict[str, object] | None = None,
    shard: Shard | None = None,
) -> IngestResult:
    """Probe, embed and store every example; publish the new version atomically.

    With ``shard``, only this shard's rows are written, into the shared version
    ``shard.version``, and the shard is marked done instead of publishing:
    ``raee publish`` publishes the version once every shard is done.
    """
    if not examples:
        raise ValueError("examples: nothing to ingest")
    if batch_size < 1:
        raise ValueError(f"batch_size: must be at least 1 (got {batch_size})")
    if shard is not None:
        examples = [e for e in examples if e.index % shard.count == shard.index]
    probe = backbone.for_task(spec)
    started = time.perf_counter()
    texts = [example.text for example in examples]
    lengths = probe.token_lengths(texts)
    too_long = [
        RowError(
            Path(e.example_id.rpartition(":")[0]),
            e.line,
            f"the prompt is {n} tokens, more than the backbone's {backbone.max_tokens}",
        )
        for e, n in zip(examples, lengths, strict=True)
        if n > backbone.max_tokens
    ]
    if too_long:  # before anything is written
        raise DataError(too_long)
    batches = length_sorted_batches(lengths, batch_size)
    stats = ExitStats(num_exits=backbone.num_layers + 1)
    timings = {"forward_s": 0.0, "encode_s": 0.0, "store_s": 0.0}
    with (
        store.begin_version(spec.name, encoder.dim, shard.version if shard else None) as writer,
        tqdm(total=len(examples), unit="ex", desc=f"ingest {spec.name}", disable=not progress) as bar,
    ):
        for batch in batches:
            chosen = [examples[i] for i in batch]
            records = probe_batch(probe, encoder, spec, chosen, timings)
            for record in records:
                stats.add(record.exit)
            tick = time.perf_counter()
            writer.add(records)
            timings["store_s"] += time.perf_counter() - tick
            bar.update(len(chosen))
        meta = VersionMeta(
            spec=spec,
            backbone_id=str(backbone.id),
            encoder_id=encoder.id,
            num_layers=backbone.num_layers,
            stats={**stats.to_dict(), "skipped_rows": skipped, **(extra_stats or {})},
        )
        tick = time.perf_counter()
        if shard is None:
            version: TaskVersion | None = writer.publish(meta)
        else:
            writer.mark_shard_done(meta, shard.index, shard.count)
            version = None
        timings["publish_s"] = time.perf_counter() - tick
    return IngestResult(
        task=spec.name,
        version_id=writer.version,
        version=version,
        stats=stats,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        store_bytes=store.size_bytes(spec.name) if version is not None else None,
        backbone_id=str(backbone.id),
        encoder_id=encoder.id,
        location=store.location,
        timings=timings,
    )


def probe_batch(
    probe: TaskProbe,
    encoder: QueryEncoder,
    spec: TaskSpec,
    examples: Sequence[Example],
    timings: dict[str, float],
) -> list[ExitRecord]:
    tick = time.perf_counter()
    probabilities = probe.exit_probabilities([e.text for e in examples])
    timings["forward_s"] += time.perf_counter() - tick
    tick = time.perf_counter()
    vectors = encoder.encode([spec.key_text(e.text) for e in examples])
    timings["encode_s"] += time.perf_counter() - tick
    return [
        ExitRecord(
            point_id=example.index,
            vector=vector,
            example_id=example.example_id,
            text=example.text,
            label=example.label,
            label_index=example.label_index,
            exit=ExitInfo.from_probabilities(probs, example.label_index),
        )
        for example, vector, probs in zip(examples, vectors, probabilities, strict=True)
    ]


def render_summary(result: IngestResult) -> str:
    """The human-readable end-of-run summary."""
    stats = result.stats
    version = result.version
    per_exit = stats.accuracy_per_exit()
    best = int(np.argmax(per_exit))
    size = "n/a" if result.store_bytes is None else f"{result.store_bytes / 1e6:.1f} MB"
    if version is None:
        headline = f"task {result.task}: shard written into version {result.version_id} (not yet published)"
        points = "n/a until published"
    else:
        headline = f"task {version.task}: published version {version.version} to {result.location}"
        points = str(version.points)
    lines = [
        headline,
        f"  examples            {stats.examples} ({result.skipped} invalid rows skipped)",
        f"  points              {points}",
        f"  with a correct exit {100.0 * stats.with_correct_exit / stats.examples:.1f} %",
        f"  full-model accuracy {per_exit[-1]:.1f} % (exit {len(per_exit) - 1})",
        f"  best single exit    {per_exit[best]:.1f} % (exit {best})",
        "  accuracy per exit   " + " ".join(f"{i}:{acc:.0f}" for i, acc in enumerate(per_exit)),
        f"  time                {result.seconds:.1f} s ({result.examples_per_second:.1f} examples/s)",
        f"  store size          {size}",
        f"  backbone            {result.backbone_id}",
        f"  encoder             {result.encoder_id}",
    ]
    return "\n".join(lines)
