"""The query encoder's two runtimes side by side: speed and identity.

ONNX Runtime (the default) and sentence-transformers (the reference) embed the
same texts, interleaved batch by batch so that machine noise hits both alike, at
batch 1 (one query) and 16 (the worker's micro-batch). Identity: the largest
absolute difference of any vector component, the smallest cosine between the two
runtimes' vectors of a text, and how many of each query's top-k neighbours (over
a corpus of the other texts) both runtimes agree on::

    python benchmarks/encoder_runtime.py --data benchmarks/data/sst2/test.jsonl

prints one JSON object (also written to ``--out`` when given). ``ratio`` is the
ONNX median over the sentence-transformers median, per query. ``length_runs``
compares the ONNX path's batching (texts in runs of similar length) with one run
per batch padded to its longest text, at batch 16 and 64. ``spinning`` compares
ONNX Runtime's pool spin-waiting during a run (``spin``, what the retrieval
service alone uses) with waking its threads operator by operator (``wake``): on
their own, and right after torch work in the same process (a matrix product on
torch's threads before each query, as when one process also runs the backbone).
``fusion`` compares the cached export (eager attention traced, then fused by ONNX
Runtime's transformer optimiser) with the export before fusion (the transformer's
default SDPA attention traced, unfused), at batch 1 and 16.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import emit, encoder_running

from raee import encoder_onnx
from raee.defaults import DEFAULT_ENCODER
from raee.encoder import QueryEncoder


def read_texts(path: Path, limit: int) -> list[str]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [str(row["text"]) for row in rows[:limit]]


def speed(ways: dict[str, Callable[[list[str]], Any]], texts: list[str], size: int) -> dict[str, Any]:
    """Median time per query of each way, interleaved batch by batch; ``ratio``: the first over the second."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    for encode in ways.values():
        encode(texts[:size])  # warm-up
    for start in range(0, len(texts) - size + 1, size):
        batch = texts[start : start + size]
        for name, encode in ways.items():
            started = time.perf_counter()
            encode(batch)
            times[name].append(1000 * (time.perf_counter() - started) / size)
    p50 = {name: float(np.median(values)) for name, values in times.items()}
    first, second = ways
    return {
        "p50_ms_per_query": {name: round(value, 3) for name, value in p50.items()},
        "ratio": round(p50[first] / p50[second], 3),
    }


def padded_to_the_longest(encoder: QueryEncoder) -> QueryEncoder:
    """The same encoder with runs so dear that each batch is one run, padded to its longest text."""
    padded = copy.copy(encoder)
    padded.run_cost_tokens = 10**9
    return padded


def spinning(spin: QueryEncoder, wake: QueryEncoder, texts: list[str], torch_work: bool) -> dict[str, Any]:
    """Batch-1 median of each, interleaved; with ``torch_work``, a torch matrix product (not timed)
    runs before each query, so that torch's threads are idle-waiting when the encoder starts."""
    a = torch.randn(1024, 1024)
    times: dict[str, list[float]] = {"spin": [], "wake": []}
    for text in texts:
        for name, encoder in (("spin", spin), ("wake", wake)):
            if torch_work:
                torch.mm(a, a)
            started = time.perf_counter()
            encoder.encode([text])
            times[name].append(1000 * (time.perf_counter() - started))
    p50 = {name: float(np.median(values)) for name, values in times.items()}
    return {
        "p50_ms_per_query": {name: round(value, 3) for name, value in p50.items()},
        "ratio": round(p50["spin"] / p50["wake"], 3),
    }


def unfused(encoder: QueryEncoder, reference: QueryEncoder, folder: Path) -> QueryEncoder:
    """``encoder`` running the export before fusion: SDPA attention traced, no fused operators."""
    assert reference.model is not None
    path = folder / "unfused.onnx"
    encoder_onnx.trace(reference.model, path, attention="sdpa")
    return encoder_running(encoder, path)


def identity(onnx: QueryEncoder, reference: QueryEncoder, texts: list[str], k: int) -> dict[str, Any]:
    got, want = onnx.encode(texts), reference.encode(texts)
    agreement = []
    for i in range(len(texts)):
        # Each text queries the others, as a query would an ingested task.
        tops = [set(np.argsort(-np.delete(v @ v[i], i), kind="stable")[:k]) for v in (got, want)]
        agreement.append(len(tops[0] & tops[1]) / k)
    return {
        "texts": len(texts),
        "max_abs_diff": float(np.abs(got - want).max()),
        "min_cosine": float((got * want).sum(axis=1).min()),
        f"top{k}_agreement_mean": float(np.mean(agreement)),
        f"top{k}_agreement_min": float(np.min(agreement)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data/sst2/test.jsonl"))
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    parser.add_argument("--limit", type=int, default=320, help="texts timed, and compared")
    parser.add_argument("--k", type=int, default=12)
    parser.add_argument("--batch", type=int, action="append", default=None, help="batch sizes (1 and 16)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts = read_texts(args.data, args.limit)
    onnx = QueryEncoder(args.encoder, spin="never")  # spinning is timed on its own, below
    reference = QueryEncoder(args.encoder, runtime="torch")
    report = {
        "encoder": onnx.id,
        "threads": args.threads,
        "identity": identity(onnx, reference, texts, args.k),
        "by_batch_size": {
            str(size): speed({"onnx": onnx.encode, "torch": reference.encode}, texts, size)
            for size in args.batch or [1, 16]
        },
        # ONNX texts in runs of similar length (the default) over one run padded to the longest.
        "length_runs": {
            str(size): speed({"runs": onnx.encode, "padded": padded_to_the_longest(onnx).encode}, texts, size)
            for size in (16, 64)
        },
    }
    spin = QueryEncoder(args.encoder, spin="always")
    report["spinning"] = {
        "alone": spinning(spin, onnx, texts, torch_work=False),
        "after_torch_work": spinning(spin, onnx, texts, torch_work=True),
    }
    with tempfile.TemporaryDirectory() as folder:
        before = unfused(onnx, reference, Path(folder))
        report["fusion"] = {
            "identity": identity(onnx, before, texts, args.k),
            **{
                str(size): speed({"fused": onnx.encode, "unfused": before.encode}, texts, size)
                for size in (1, 16)
            },
        }
    emit(report, args.out)


if __name__ == "__main__":
    main()
