"""Ingest throughput against a bare forward pass, and top-k query latency of the embedded store.

Both throughputs are measured in one run over the same texts and batches, so the
ratio is meaningful on a noisy shared machine; absolute numbers are not.

    python benchmarks/ingest_and_query.py --data ../shared/data/sst2/train.jsonl

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ingest import length_sorted_batches, run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.store import open_store
from raee.tasks import TaskSpec


def forward_seconds(
    backbone: Backbone, prompts: list[str], batches: list[np.ndarray], *, with_head: bool
) -> float:
    """A plain Hugging Face forward pass over the batches.

    ``with_head``: the causal LM as users call it, logits of the last position only
    (``logits_to_keep=1``); without: the transformer body alone (hidden states), the
    floor any exit probing must pay.
    """
    tokenizer = backbone.tokenizer
    model = backbone.model if with_head else backbone.model.base_model
    extra = {"logits_to_keep": 1} if with_head else {}
    with torch.inference_mode():
        model(**tokenizer(prompts[:2], padding=True, return_tensors="pt"), use_cache=False, **extra)
        started = time.perf_counter()
        for batch in batches:
            encoded = tokenizer([prompts[i] for i in batch], padding=True, return_tensors="pt")
            model(**encoded, use_cache=False, **extra)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sst2/train.jsonl"))
    parser.add_argument("--template", default="{text} It was")
    parser.add_argument("--label", action="append", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N rows only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = TaskSpec.from_flags("bench", args.template, args.label or ["negative=terrible", "positive=great"])
    examples, errors = read_examples(args.data, spec)
    if errors:
        raise SystemExit(f"{len(errors)} invalid rows, first: {errors[0]}")
    examples = examples[: args.limit] if args.limit else examples
    backbone = Backbone.load("gemma-3-270m")
    encoder = QueryEncoder()
    probe = backbone.for_task(spec)
    texts = [e.text for e in examples]
    batches = length_sorted_batches(probe.token_lengths(texts), args.batch_size)

    prompts = probe.prompts(texts)
    probe.exit_probabilities(texts[:2])  # warm-up, as for the forward passes
    head_s = forward_seconds(backbone, prompts, batches, with_head=True)
    body_s = forward_seconds(backbone, prompts, batches, with_head=False)
    with tempfile.TemporaryDirectory() as home:
        store = open_store(home=home)
        result = run_ingest(
            spec,
            examples,
            backbone=backbone,
            encoder=encoder,
            store=store,
            batch_size=args.batch_size,
            progress=False,
        )
        rng = np.random.default_rng(0)
        queries = encoder.encode([spec.key_text(texts[i]) for i in rng.integers(0, len(texts), args.queries)])
        store.search("bench", queries[:1], args.k)  # load the shard
        latencies = []
        for row in queries:
            tick = time.perf_counter()
            store.search("bench", row[None], args.k)
            latencies.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        store.search("bench", queries, args.k)
        batched_ms_per_query = 1000 * (time.perf_counter() - tick) / len(queries)
        store.close()

    n = len(examples)
    report = {
        "examples": n,
        "points": result.version.points,
        "forward_with_head_examples_per_s": n / head_s,
        "forward_body_only_examples_per_s": n / body_s,
        "ingest_examples_per_s": n / result.seconds,
        "ingest_vs_forward_with_head": head_s / result.seconds,
        "ingest_vs_forward_body_only": body_s / result.seconds,
        "ingest_breakdown_s": {k: round(v, 2) for k, v in result.timings.items()},
        f"query_top{args.k}_p50_ms": 1000 * float(np.percentile(latencies, 50)),
        f"query_top{args.k}_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        f"query_top{args.k}_batched_ms_per_query": batched_ms_per_query,
        "store_bytes": result.store_bytes,
        "backbone": str(backbone.id),
        "torch_threads": torch.get_num_threads(),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
