"""How far the query encoder can still fall: its work against this CPU's arithmetic peak.

Issue 11 asks for a retrieval overhead of at most 4 % of a full forward pass, and
the encoder is most of it. As long as the vectors must not move (no re-ingest, the
same neighbours), the encoder's work per query is fixed: its weights times the
query's tokens. This benchmark counts that work in floating-point operations (torch's
``FlopCounterMode`` over a real forward of each model, one query at a time), measures
the best fp32 matrix-multiply rate this CPU sustains with the same threads (a large
square GEMM, the most favourable shape there is) and times both models on the same
queries at batch 1, interleaved:

* ``gemm_peak_gflops``: the best of several large GEMMs;
* per model, the FLOPs of one query, its p50 time (the encoder as the services run
  it, ONNX Runtime; the backbone's full forward), the rate achieved and its share of
  the peak;
* ``shape_peak_gflops``: the best rate of the encoder's own matrix multiplies at
  the queries' p50 token count (small products run below a large GEMM's peak);
* ``encode_ms_at_peak`` and ``encode_ms_at_shape_peak``: the encoder's FLOPs per
  query (p50) at those two rates, every other operator free;
* ``retrieval_overhead_floor`` (and ``..._at_shape_peak``): those over the full
  forward's p50: the least retrieval overhead any exact fp32 runtime of this
  encoder could reach here, with search, aggregation and every hop free.

The task must be ingested in the embedded store already (its template makes the
encoder's keys)::

    python benchmarks/compute_floor.py --task sst2-cloze --data benchmarks/data/sst2/test.jsonl \\
        --out docs/results/compute_floor.json

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from _common import emit, read_valid, task_parser
from torch.utils.flop_counter import FlopCounterMode

from raee.backbone import Backbone
from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER
from raee.encoder import QueryEncoder
from raee.store import open_store

GEMM_SIZE = 1024


def best_mm_seconds(rows: int, inner: int, columns: int, repeats: int) -> float:
    """The shortest of ``repeats`` fp32 ``(rows, inner) @ (inner, columns)`` products, after a warm-up."""
    a, b = torch.randn(rows, inner), torch.randn(inner, columns)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return best


def gemm_peak_gflops(repeats: int) -> float:
    """The best rate of a ``GEMM_SIZE``-square fp32 matrix multiply, in GFLOP/s."""
    return 2 * GEMM_SIZE**3 / best_mm_seconds(GEMM_SIZE, GEMM_SIZE, GEMM_SIZE, repeats) / 1e9


def shape_peak_gflops(tokens: int, hidden: int, intermediate: int, repeats: int) -> float:
    """The best rate of the encoder's own matrix multiplies for a query of ``tokens`` tokens.

    A BERT-style layer multiplies ``tokens`` rows by four ``hidden``-square weights
    (query, key, value, output) and by the two feed-forward ones; the rate is their
    FLOPs over the sum of each one's best time. Small products run below the peak of
    a large square one, so this is the realistic ceiling of a query's rate.
    """
    shapes = [(hidden, hidden)] * 4 + [(hidden, intermediate), (intermediate, hidden)]
    flops = sum(2 * tokens * inner * columns for inner, columns in shapes)
    seconds = sum(best_mm_seconds(tokens, inner, columns, repeats) for inner, columns in shapes)
    return flops / seconds / 1e9


def flops_of(call: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def timed_ms(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return 1000 * (time.perf_counter() - started)


def model_report(flops: list[int], ms: list[float], peak: float) -> dict[str, float]:
    rate = sum(flops) / (sum(ms) / 1000) / 1e9
    return {
        "flops_per_query_p50": float(np.median(flops)),
        "p50_ms": float(np.median(ms)),
        "achieved_gflops": rate,
        "share_of_peak": rate / peak,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    spec = open_store(home=args.home).get_task(args.task).spec
    texts = [e.text for e in read_valid(args.data, spec, args.limit)]
    keys = [spec.key_text(text) for text in texts]
    served = QueryEncoder(args.encoder)  # ONNX Runtime, as the retrieval service runs it
    reference = QueryEncoder(args.encoder, runtime="torch")  # the same weights, to count
    probe = Backbone.load(args.backbone).for_task(spec)
    layers = probe.num_layers

    encoder_flops = [flops_of(partial(reference.encode, [key])) for key in keys]
    backbone_flops = [flops_of(partial(probe.predict_at, [text], layers)) for text in texts]
    served.encode(keys[:4])  # warm-up
    probe.predict_at(texts[:1], layers)
    encode_ms, forward_ms = [], []
    for key, text in zip(keys, texts, strict=True):  # interleaved: noise hits both alike
        encode_ms.append(timed_ms(partial(served.encode, [key])))
        forward_ms.append(timed_ms(partial(probe.predict_at, [text], layers)))
    tokens = [len(ids) for ids in served.tokenizer(keys, truncation=True)["input_ids"]]
    assert reference.model is not None
    transformer: Any = reference.model[0]  # sentence-transformers' Transformer module
    config = transformer.auto_model.config
    peak = gemm_peak_gflops(args.gemm_repeats)
    shape_peak = shape_peak_gflops(
        int(np.median(tokens)), config.hidden_size, config.intermediate_size, 50 * args.gemm_repeats
    )
    flops_p50 = float(np.median(encoder_flops))
    forward_p50 = float(np.median(forward_ms))
    return {
        "task": args.task,
        "queries": len(texts),
        "threads": args.threads,
        "encoder": {"id": served.id, "tokens_p50": float(np.median(tokens))}
        | model_report(encoder_flops, encode_ms, peak),
        "backbone": {"id": str(probe.backbone.id)} | model_report(backbone_flops, forward_ms, peak),
        "gemm_peak_gflops": peak,
        "shape_peak_gflops": shape_peak,
        "encode_ms_at_peak": flops_p50 / peak / 1e6,
        "encode_ms_at_shape_peak": flops_p50 / shape_peak / 1e6,
        "retrieval_overhead_floor": flops_p50 / peak / 1e6 / forward_p50,
        "retrieval_overhead_floor_at_shape_peak": flops_p50 / shape_peak / 1e6 / forward_p50,
        "encode_over_full_forward_measured": float(np.median(encode_ms)) / forward_p50,
    }


def main() -> None:
    parser = task_parser(__doc__, task="sst2-cloze")
    parser.add_argument("--limit", type=int, default=64, help="queries to count and time")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--gemm-repeats", type=int, default=20)
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
