"""Bounded load on localhost: N clients for S seconds against both services in this process.

Reports p50/p99 latency, requests per second, errors by status, and the process's
resident memory through the run (services and clients share the process, so the
figures are an upper bound for the services): growth that levels off is warm-up
(allocator pools, buffers for new batch shapes), growth that does not is a leak.

    python benchmarks/load.py --task demo-sentiment --clients 16 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import grpc
import numpy as np
from _common import emit, read_valid, task_parser

from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import start_pair


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace) -> dict[str, object]:
    spec = open_store(home=args.home).get_task(args.task).spec
    texts = [e.text for e in read_valid(args.data, spec)]
    pair = await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=args.home),
        InferenceSettings(port=0, metrics_port=0, http_port=-1),
    )
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    degraded = 0
    try:
        async with InferenceClient(pair.inference_address) as warm:
            for text in texts[:16]:
                await warm.classify(args.task, text)
        rss_start = rss_mb()
        deadline = time.monotonic() + args.seconds

        async def client_loop(index: int) -> None:
            nonlocal degraded
            async with InferenceClient(pair.inference_address, timeout_s=30) as client:
                i = index
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    try:
                        answer = await client.classify(args.task, texts[i % len(texts)])
                        degraded += answer.degraded
                    except grpc.aio.AioRpcError as error:
                        errors[error.code().name] += 1
                    latencies.append(1000 * (time.perf_counter() - started))
                    i += args.clients

        rss_series: list[float] = []

        async def sample_rss() -> None:
            while time.monotonic() < deadline:
                rss_series.append(round(rss_mb()))
                await asyncio.sleep(args.seconds / 12)

        started = time.monotonic()
        await asyncio.gather(sample_rss(), *(client_loop(c) for c in range(args.clients)))
        elapsed = time.monotonic() - started
        rss_end = rss_mb()
    finally:
        await pair.stop()
    return {
        "task": args.task,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_s": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "errors": dict(errors),
        "degraded": degraded,
        "rss_start_mb": round(rss_start),
        "rss_end_mb": round(rss_end),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_every_twelfth_of_the_run_mb": rss_series,
    }


def main() -> None:
    parser = task_parser(__doc__, task="demo-sentiment", data=DEMO_DIR / "test.jsonl")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    report = asyncio.run(run(args))
    emit(report, args.out)


if __name__ == "__main__":
    main()
