"""Ingest throughput against a bare forward pass, and top-k query latency of the embedded store.

The machine is shared and noisy, so the three passes are interleaved batch by
batch over the same length-sorted batches: for each batch, the plain Hugging Face
forward pass (with its LM head on the last position, ``logits_to_keep=1``), the
transformer body alone, then the ingest step (exit probing over all exits,
embedding, writing to the store). Noise then hits all three alike, and the ratios
are meaningful; absolute numbers are not. Every batch goes into one version, which
is published and then queried.

    python benchmarks/ingest_and_query.py --data benchmarks/data/sst2/train.jsonl

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, read_valid
from tqdm import tqdm

from ingest import length_sorted_batches, probe_batch
from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.exit_info import ExitStats
from raee.store import ExitStore, VersionMeta, open_store
from raee.tasks import TaskSpec


def timed_forward(backbone: Backbone, prompts: list[str], *, with_head: bool) -> float:
    model = backbone.model if with_head else backbone.model.base_model
    extra = {"logits_to_keep": 1} if with_head else {}
    started = time.perf_counter()
    with torch.inference_mode():
        encoded = backbone.tokenizer(prompts, padding=True, return_tensors="pt")
        model(**encoded, use_cache=False, **extra)
    return time.perf_counter() - started


def query_latencies(store: ExitStore, task: str, queries: np.ndarray, k: int) -> dict[str, float]:
    store.search(task, queries[:1], k)  # open the shard
    latencies = []
    for row in queries:
        tick = time.perf_counter()
        store.search(task, row[None], k)
        latencies.append(time.perf_counter() - tick)
    tick = time.perf_counter()
    store.search(task, queries, k)
    batched = (time.perf_counter() - tick) / len(queries)
    return {
        f"query_top{k}_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        f"query_top{k}_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        f"query_top{k}_batched_ms_per_query": 1000 * batched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data/sst2/train.jsonl"))
    parser.add_argument("--template", default="{text} It was")
    parser.add_argument("--label", action="append", default=None, help="NAME=WORD (default sst2's)")
    parser.add_argument("--limit", type=int, default=None, help="first N rows only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--query-task", help="measure queries on this published task instead")
    parser.add_argument("--query-home", type=Path, default=Path(".raee"), help="its embedded store")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = TaskSpec.from_flags("bench", args.template, args.label or ["negative=terrible", "positive=great"])
    examples = read_valid(args.data, spec, args.limit)
    backbone = Backbone.load("gemma-3-270m")
    encoder = QueryEncoder()
    probe = backbone.for_task(spec)
    texts = [e.text for e in examples]
    prompts = probe.prompts(texts)
    batches = length_sorted_batches(probe.token_lengths(texts), args.batch_size)
    probe.exit_probabilities(texts[:2])  # warm-up of every path
    timed_forward(backbone, prompts[:2], with_head=True)

    seconds = {"forward_with_head": 0.0, "forward_body_only": 0.0, "ingest": 0.0}
    stage_timings = {"forward_s": 0.0, "encode_s": 0.0, "store_s": 0.0}
    stats = ExitStats(num_exits=backbone.num_layers + 1)
    with tempfile.TemporaryDirectory() as home:
        store = open_store(home=home)
        with store.begin_version(spec.name, encoder.dim) as writer:
            for batch in tqdm(batches, unit="batch", desc="interleaved passes"):
                seconds["forward_with_head"] += timed_forward(
                    backbone, [prompts[i] for i in batch], with_head=True
                )
                seconds["forward_body_only"] += timed_forward(
                    backbone, [prompts[i] for i in batch], with_head=False
                )
                tick = time.perf_counter()
                records = probe_batch(probe, encoder, spec, [examples[i] for i in batch], stage_timings)
                writer.add(records)
                seconds["ingest"] += time.perf_counter() - tick
                for record in records:
                    stats.add(record.exit)
            tick = time.perf_counter()
            meta = VersionMeta(spec, str(backbone.id), encoder.id, backbone.num_layers, stats.to_dict())
            version = writer.publish(meta)
            seconds["ingest"] += time.perf_counter() - tick
        store_bytes = store.size_bytes(spec.name)
        rng = np.random.default_rng(0)
        picks = rng.integers(0, len(texts), args.queries)
        queries = encoder.encode([spec.key_text(texts[i]) for i in picks])
        if args.query_task:
            store.close()
            store = open_store(home=args.query_home)
            query_points = store.get_task(args.query_task).points
            latency = query_latencies(store, args.query_task, queries, args.k)
        else:
            query_points = version.points
            latency = query_latencies(store, spec.name, queries, args.k)
        store.close()

    n = len(examples)
    report = {
        "examples": n,
        "points": version.points,
        **{f"{name}_examples_per_s": n / s for name, s in seconds.items()},
        "ingest_vs_forward_with_head": seconds["forward_with_head"] / seconds["ingest"],
        "ingest_vs_forward_body_only": seconds["forward_body_only"] / seconds["ingest"],
        "ingest_stage_s": {k: round(v, 2) for k, v in stage_timings.items()},
        "query_task_points": query_points,
        **latency,
        "store_bytes": store_bytes,
        "backbone": str(backbone.id),
        "torch_threads": torch.get_num_threads(),
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
