"""Latency and throughput through gRPC, RAEE against the full model, measured in one run.

Starts both services in this process on the embedded store (the task must be
ingested there already, e.g. ``raee ingest --task-spec examples/sst2.yaml --data
benchmarks/data/sst2/train.jsonl``), then:

* batch-1 latency: one client and one request at a time, RAEE and FULL alternating
  request by request over the same texts, so that noise hits both alike;
* throughput: 16 concurrent clients for a fixed number of requests per round,
  RAEE and FULL rounds alternating.

    python benchmarks/grpc_latency.py --task sst2 --data benchmarks/data/sst2/test.jsonl

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
from _common import emit, read_valid, task_parser

from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.pair import start_pair

MODES = ("raee", "full")


async def batch1_latency(client: InferenceClient, task: str, texts: list[str]) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    exits: list[int] = []
    for text in texts:
        for mode in MODES:
            started = time.perf_counter()
            answer = await client.classify(task, text, mode)
            latencies[mode].append(1000 * (time.perf_counter() - started))
            if mode == "raee":
                exits.append(answer.exit_layer)
    latencies["raee_exit"] = [float(e) for e in exits]
    return latencies


async def throughput(
    address: str, task: str, texts: list[str], mode: str, clients: int, per_client: int
) -> float:
    async def one_client(offset: int) -> None:
        async with InferenceClient(address) as client:
            for i in range(per_client):
                await client.classify(task, texts[(offset * per_client + i) % len(texts)], mode)

    started = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in range(clients)))
    return clients * per_client / (time.perf_counter() - started)


async def run(args: argparse.Namespace) -> dict[str, object]:
    spec = open_store(home=args.home).get_task(args.task).spec
    texts = [e.text for e in read_valid(args.data, spec, args.limit)]
    pair = await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=args.home),
        InferenceSettings(
            port=0, metrics_port=0, http_port=-1, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms
        ),
    )
    try:
        async with InferenceClient(pair.inference_address) as client:
            await batch1_latency(client, args.task, texts[:4])  # warm-up
            latency = await batch1_latency(client, args.task, texts)
        rates: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                rate = await throughput(
                    pair.inference_address, args.task, texts, mode, args.clients, args.per_client
                )
                rates[mode].append(rate)
    finally:
        await pair.stop()

    p50 = {mode: float(np.percentile(latency[mode], 50)) for mode in MODES}
    p95 = {mode: float(np.percentile(latency[mode], 95)) for mode in MODES}
    throughput_per_mode = {mode: float(np.median(rates[mode])) for mode in MODES}
    return {
        "task": args.task,
        "requests_batch1": len(texts),
        "batch1_p50_ms": p50,
        "batch1_p95_ms": p95,
        "latency_ratio_p50": p50["raee"] / p50["full"],
        "latency_ratio_p95": p95["raee"] / p95["full"],
        "raee_avg_exit": float(np.mean(latency["raee_exit"])),
        f"throughput_{args.clients}_clients_rps": throughput_per_mode,
        f"throughput_ratio_{args.clients}": throughput_per_mode["raee"] / throughput_per_mode["full"],
        "rounds": args.rounds,
        "max_batch": args.max_batch,
        "max_wait_ms": args.max_wait_ms,
    }


def main() -> None:
    parser = task_parser(__doc__)
    parser.add_argument("--limit", type=int, default=300, help="test texts for batch-1 latency")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    emit(report, args.out)


if __name__ == "__main__":
    main()
