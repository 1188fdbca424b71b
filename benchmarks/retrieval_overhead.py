"""Retrieval overhead, in process: encode, search and aggregate against a full forward pass.

RAEE pays for its exit decision before the backbone runs: the query is embedded,
the exit store searched and the neighbours' exit information aggregated by the
exit rule. This benchmark times each step for one query at a time (batch 1, the
worst case: nothing amortised) and for batches of 16 (what the worker's
micro-batcher sends under load), each interleaved with a full forward pass of the
backbone over the same texts, so that machine noise hits all alike. No gRPC: the
retrieval service's own RetrievalTiming reports the same steps from inside the
service.

The task must be ingested in the embedded store already, e.g.::

    raee ingest --task-spec examples/sst2.yaml --data benchmarks/data/sst2/train.jsonl
    python benchmarks/retrieval_overhead.py --task sst2 --data benchmarks/data/sst2/test.jsonl

prints one JSON object (also written to ``--out`` when given). ``overhead`` is the
sum of the steps' medians over the full forward's median, per query, at batch 1.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch
from _common import emit, read_valid, task_parser, timed

from raee.backbone import Backbone
from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER
from raee.encoder import QueryEncoder
from raee.exit_rule import DEFAULT_K, choose_exit
from raee.store import open_store

STEPS = ("resolve", "encode", "search", "aggregate")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    store = open_store(home=args.home)
    version = store.get_task(args.task)
    spec = version.spec
    texts = [e.text for e in read_valid(args.data, spec, args.limit)]
    backbone = Backbone.load(args.backbone)
    encoder = QueryEncoder(args.encoder)
    if str(backbone.id) != version.backbone_id or encoder.id != version.encoder_id:
        raise SystemExit(f"{args.task} was ingested with {version.backbone_id} and {version.encoder_id}")
    probe = backbone.for_task(spec)

    def one_batch(batch: list[str]) -> dict[str, float]:
        """Milliseconds per query of each step, for ``batch`` answered together."""
        current, resolve_ms = timed(lambda: store.get_task(args.task))
        vectors, encode_ms = timed(lambda: encoder.encode([spec.key_text(t) for t in batch]))
        found, search_ms = timed(lambda: store.search(args.task, vectors, args.k))
        _, aggregate_ms = timed(lambda: [choose_exit(n, current.num_layers) for n in found.neighbours])
        _, full_ms = timed(lambda: probe.predict_at(batch, backbone.num_layers))
        total = {
            "resolve": resolve_ms,
            "encode": encode_ms,
            "search": search_ms,
            "aggregate": aggregate_ms,
            "full_forward": full_ms,
        }
        return {name: ms / len(batch) for name, ms in total.items()}

    sizes = sorted(set(args.batch))
    group = max(sizes)
    samples: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    one_batch(texts[:group])  # warm-up: lazy inits, allocator, caches
    # Every batch size runs over the same texts, group by group, so noise hits all alike.
    for start in range(0, len(texts) - group + 1, group):
        for size in sizes:
            for offset in range(start, start + group, size):
                samples[size].append(one_batch(texts[offset : offset + size]))
    store.close()
    return {
        "task": args.task,
        "points": version.points,
        "k": args.k,
        "queries": len(samples[sizes[0]]) * sizes[0],
        "torch_threads": torch.get_num_threads(),
        "by_batch_size": {str(size): summarise(samples[size]) for size in sizes},
        "overhead": summarise(samples[1])["overhead"] if 1 in samples else None,
        "backbone": str(backbone.id),
        "encoder": encoder.id,
    }


def summarise(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Median milliseconds per query of each step, and the steps over the full forward pass."""
    p50 = {name: float(np.median([s[name] for s in samples])) for name in (*STEPS, "full_forward")}
    retrieval_ms = sum(p50[step] for step in STEPS)
    return {
        "p50_ms_per_query": {name: round(value, 3) for name, value in p50.items()},
        "retrieval_ms_per_query": round(retrieval_ms, 3),
        "overhead": retrieval_ms / p50["full_forward"],
        "overhead_by_step": {step: p50[step] / p50["full_forward"] for step in STEPS},
    }


def main() -> None:
    parser = task_parser(__doc__)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--k", type=int, default=DEFAULT_K)
    parser.add_argument("--limit", type=int, default=320, help="test texts, one query each")
    parser.add_argument(
        "--batch", type=int, action="append", default=None, help="queries answered together (1 and 16)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    args.batch = args.batch or [1, 16]
    report = run(args)
    emit(report, args.out)


if __name__ == "__main__":
    main()
