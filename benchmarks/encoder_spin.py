"""The shared query encoder spinning its threads for a lone query, and never.

Where the retrieval service shares a process with the backbone (``raee up``, the
eval), its ONNX encoder spins its threads between operators for a run of one text
only (``QueryEncoder(spin="lone")``): a lone query is when the cores are most
likely idle, and the batches that come under load do not take them from a forward
pass. For each task/template pair this serves the eval's pair of services on the
embedded store and switches that encoder between ``never`` and ``lone``:

- batch 1: for each of ``--texts`` test texts, under each policy in alternating
  order, a FULL call (so the backbone's threads have just worked, as between the
  eval's timed calls), then a RAEE call and a kNN call, timed through gRPC; the kNN
  reply's ``encode_ms`` is the encoder's own time. Medians per policy.
- ``--clients`` concurrent callers: the eval's RAEE and FULL rounds under each
  policy in alternating order (:func:`_common.interleaved_rates`).

    python benchmarks/encoder_spin.py --pair cloze/mr --pair paper/sst2 \\
        --out docs/results/encoder_spin.json

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from _common import emit, eval_pair, load_parser, load_texts, settings_report

POLICIES = ("never", "lone")
BATCH1_TIMES = ("raee", "knn", "encode")


def _switching(encoder: Any, policy: str, address: str) -> Callable[[], str]:
    def switch() -> str:
        encoder.spin = policy
        return address

    return switch


async def batch1(pair: Any, task: str, texts: list[str]) -> dict[str, dict[str, float]]:
    """Median RAEE and kNN latency (ms) through gRPC and the encoder's own ms, per policy."""
    import grpc
    import numpy as np

    from raee.v1 import inference_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
    from raee.wire.inference import classify_request

    encoder = pair.retrieval.servicer.engine.encoder
    found = encoder.spin  # put back afterwards: the load rounds switch policies themselves
    times: dict[str, dict[str, list[float]]] = {p: {k: [] for k in BATCH1_TIMES} for p in POLICIES}
    async with (
        grpc.aio.insecure_channel(pair.inference_address) as inference_channel,
        grpc.aio.insecure_channel(pair.retrieval_address) as retrieval_channel,
    ):
        inference = inference_pb2_grpc.InferenceServiceStub(inference_channel)
        retrieval = retrieval_pb2_grpc.RetrievalServiceStub(retrieval_channel)
        try:
            for index, text in enumerate(texts):
                for policy in POLICIES if index % 2 == 0 else POLICIES[::-1]:
                    encoder.spin = policy
                    await inference.Classify(classify_request(task, text, "full"), timeout=60)
                    started = time.perf_counter()
                    await inference.Classify(classify_request(task, text, "raee"), timeout=60)
                    times[policy]["raee"].append(1000 * (time.perf_counter() - started))
                    started = time.perf_counter()
                    reply = await retrieval.GetExitDistribution(
                        retrieval_pb2.ExitDistributionRequest(task=task, text=text), timeout=60
                    )
                    times[policy]["knn"].append(1000 * (time.perf_counter() - started))
                    times[policy]["encode"].append(reply.timing.encode_ms)
        finally:
            encoder.spin = found
    return {p: {k: round(float(np.median(v)), 3) for k, v in times[p].items()} for p in POLICIES}


async def run(args: Any) -> dict[str, Any]:
    async with eval_pair(args) as (pair, tasks):
        engine = pair.retrieval.servicer.engine
        assert engine is not None  # the pair is serving
        encoder = engine.encoder
        settings = {p: _switching(encoder, p, pair.inference_address) for p in POLICIES}

        async def at_batch1(task: Any) -> dict[str, Any]:
            p50 = await batch1(pair, task.spec.name, load_texts(task, args.texts))
            ratios = {key: round(p50["lone"][key] / p50["never"][key], 3) for key in BATCH1_TIMES}
            return {"batch1_p50_ms": p50, "batch1_lone_over_never": ratios}

        report = await settings_report(args, tasks, settings, "lone_over_never", at_batch1)
    report["batch1_texts"] = args.texts
    pairs = list(report["pairs"].values())
    report["mean"]["batch1_lone_over_never"] = {
        key: round(sum(p["batch1_lone_over_never"][key] for p in pairs) / len(pairs), 3)
        for key in BATCH1_TIMES
    }
    return report


def main() -> None:
    parser = load_parser(__doc__)
    parser.add_argument("--texts", type=int, default=60, help="test texts timed at batch 1")
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
