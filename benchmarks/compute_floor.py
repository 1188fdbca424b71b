"""How far the query encoder can still fall: its arithmetic against this CPU's multiply rates.

Issue 11 asks for a retrieval overhead of at most 4 % of a full forward pass, and
the encoder is most of it. As long as the vectors must not move (no re-ingest, the
same neighbours), the encoder's arithmetic per query is fixed by its weights and
the query's tokens. This benchmark

* counts one query's floating-point operations with torch's ``FlopCounterMode``
  over a real forward of each model. It counts the matrix products that have a FLOP
  formula: on a CPU, the weight products. The attention kernel has none, so the
  attention products (4·T²·hidden per layer, about 1 % of MiniLM's at 24 tokens)
  are left out, so every floor below stays a lower bound;
* times the encoder as the services run it (ONNX Runtime, the fused graph) and the
  backbone's full forward on the same queries, one at a time, interleaved;
* measures two fp32 multiply rates with the same threads, each the best of
  ``--repeats`` runs with its operands in cache (a real forward streams its weights,
  so both rates are generous):
  ``gemm_peak_gflops``, a 1024-square product, near this CPU's peak; and
  ``shape_peak_gflops``, the products the fused encoder graph runs at the queries'
  p50 token count (per layer: the joint query-key-value weight, the attention
  output weight and the two feed-forward weights).

Reported, per model: FLOPs per query (p50), p50 time, the rate that makes
(``flops_p50 / p50``) and its share of the GEMM peak. Then the encoder's FLOPs at
each rate (``encode_ms_at_peak``, ``encode_ms_at_shape_peak``), every other operator
free, and those over the full forward's p50 (``encoder_floor``,
``encoder_floor_at_shape_peak``): the least share of a full forward that any exact
fp32 runtime of this encoder could take on this CPU, before search and aggregation.

The task must be ingested in the embedded store already (its template makes the
encoder's keys)::

    python benchmarks/compute_floor.py --task sst2-cloze --data benchmarks/data/sst2/test.jsonl \\
        --limit 128 --out docs/results/compute_floor.json

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import torch
from _common import emit, read_valid, task_parser, timed
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
    return min(timed(partial(torch.mm, a, b))[1] for _ in range(repeats)) / 1000


def gemm_peak_gflops(repeats: int) -> float:
    """The best rate of a ``GEMM_SIZE``-square fp32 matrix product, in GFLOP/s."""
    return 2 * GEMM_SIZE**3 / best_mm_seconds(GEMM_SIZE, GEMM_SIZE, GEMM_SIZE, repeats) / 1e9


def shape_peak_gflops(tokens: int, hidden: int, intermediate: int, repeats: int) -> float:
    """The best rate of the fused encoder graph's weight products for a query of ``tokens`` tokens.

    Per layer: ``tokens`` rows against the joint query-key-value weight, the attention
    output weight and the two feed-forward weights. The rate is their FLOPs over the
    sum of each product's best time.
    """
    shapes = [(hidden, 3 * hidden), (hidden, hidden), (hidden, intermediate), (intermediate, hidden)]
    flops = sum(2 * tokens * inner * columns for inner, columns in shapes)
    seconds = sum(best_mm_seconds(tokens, inner, columns, repeats) for inner, columns in shapes)
    return flops / seconds / 1e9


def flops_of(call: Callable[[], Any]) -> int:
    """The floating-point operations torch counts while ``call`` runs."""
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())


def model_report(flops: list[int], ms: list[float], peak: float) -> dict[str, float]:
    """One model's p50 FLOPs and time per query, the rate they make, and its share of ``peak``."""
    flops_p50, ms_p50 = float(np.median(flops)), float(np.median(ms))
    rate = flops_p50 / (ms_p50 / 1000) / 1e9
    return {
        "flops_per_query_p50": flops_p50,
        "p50_ms": ms_p50,
        "gflops_at_p50": rate,
        "share_of_peak": rate / peak,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Count, time and bound, as the module docstring says."""
    torch.set_num_threads(args.threads)
    store = open_store(home=args.home)
    try:
        version = store.get_task(args.task)
    finally:
        store.close()
    spec = version.spec
    texts = [e.text for e in read_valid(args.data, spec, args.limit)]
    keys = [spec.key_text(text) for text in texts]
    served = QueryEncoder(args.encoder)  # ONNX Runtime, as the retrieval service runs it
    reference = QueryEncoder(args.encoder, runtime="torch")  # the same weights, to count
    backbone = Backbone.load(args.backbone)
    if str(backbone.id) != version.backbone_id or served.id != version.encoder_id:
        raise SystemExit(f"{args.task} was ingested with {version.backbone_id} and {version.encoder_id}")
    probe = backbone.for_task(spec)
    layers = probe.num_layers

    encoder_flops = [flops_of(partial(reference.encode, [key])) for key in keys]
    backbone_flops = [flops_of(partial(probe.predict_at, [text], layers)) for text in texts]
    served.encode(keys[:4])  # warm-up
    probe.predict_at(texts[:1], layers)
    encode_ms: list[float] = []
    forward_ms: list[float] = []
    for key, text in zip(keys, texts, strict=True):  # interleaved: noise hits both alike
        encode_ms.append(timed(partial(served.encode, [key]))[1])
        forward_ms.append(timed(partial(probe.predict_at, [text], layers))[1])

    encoded = served.tokenizer(keys, truncation=True, max_length=served.max_seq_length)
    tokens = [len(ids) for ids in encoded["input_ids"]]
    assert reference.model is not None
    transformer: Any = reference.model[0]  # sentence-transformers' Transformer module
    config = transformer.auto_model.config
    peak = gemm_peak_gflops(args.repeats)
    shape_peak = shape_peak_gflops(
        round(float(np.median(tokens))), config.hidden_size, config.intermediate_size, args.repeats
    )
    flops_p50 = float(np.median(encoder_flops))
    forward_p50 = float(np.median(forward_ms))
    at_peak_ms, at_shape_peak_ms = flops_p50 / peak / 1e6, flops_p50 / shape_peak / 1e6
    return {
        "task": args.task,
        "queries": len(texts),
        "threads": args.threads,
        "repeats": args.repeats,
        "encoder": {"id": served.id, "tokens_p50": float(np.median(tokens))}
        | model_report(encoder_flops, encode_ms, peak),
        "backbone": {"id": str(backbone.id)} | model_report(backbone_flops, forward_ms, peak),
        "gemm_peak_gflops": peak,
        "shape_peak_gflops": shape_peak,
        "encode_ms_at_peak": at_peak_ms,
        "encode_ms_at_shape_peak": at_shape_peak_ms,
        "encoder_floor": at_peak_ms / forward_p50,
        "encoder_floor_at_shape_peak": at_shape_peak_ms / forward_p50,
        "encoder_measured": float(np.median(encode_ms)) / forward_p50,
    }


def main() -> None:
    parser = task_parser(__doc__, task="sst2-cloze")
    parser.add_argument("--limit", type=int, default=128, help="queries to count and time")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=200, help="runs of each product timed for a rate")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--encoder", default=DEFAULT_ENCODER)
    args = parser.parse_args()
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
