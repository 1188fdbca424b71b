"""Wire-level fuzzing: random and mutated bytes, sent raw to every method of both services.

The bodies come from ``tests/wire_bodies.py`` (a third random bytes, the rest
mutations of valid messages: bit flips, truncations, insertions, overlong
varints, huge lengths, bad wire types, invalid UTF-8, repeats). They are sent
with gRPC generic calls (no serializer), so the services' own decoding is under
test. Statuses are counted on the client side and from the services' metrics
(``raee_grpc_request_seconds``); any UNKNOWN or INTERNAL fails the run (exit 1).

    PYTHONPATH=$PWD python benchmarks/wire_fuzz.py --requests 10000 --out docs/results/wire_fuzz.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import resource
import sys
import time
from typing import Any

import grpc
from _common import demo_parser, emit
from faults import ensure_task, pair_on
from prometheus_client import REGISTRY

from raee.v1 import inference_pb2, inference_pb2_grpc
from tests.wire_bodies import bodies


def metric_codes() -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name == "raee_grpc_request_seconds_count":
                counts[sample.labels["code"]] += int(sample.value)
    return counts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = ensure_task(args.home, args.task)
    pair = await pair_on(home)
    sent = bodies(random.Random(args.seed), args.task, args.requests)
    client: collections.Counter[str] = collections.Counter()
    by_method: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    limit = asyncio.Semaphore(args.concurrency)
    before = metric_codes()
    started = time.perf_counter()
    try:
        channels = {
            "raee.v1.InferenceService": grpc.aio.insecure_channel(pair.inference_address),
            "raee.v1.RetrievalService": grpc.aio.insecure_channel(pair.retrieval_address),
        }

        async def send(method: str, body: bytes) -> None:
            async with limit:
                try:
                    await channels[method.split("/")[1]].unary_unary(method)(body, timeout=120)
                    code = "OK"
                except grpc.aio.AioRpcError as error:
                    code = error.code().name
            client[code] += 1
            by_method[method.rsplit("/", 1)[-1]][code] += 1

        await asyncio.gather(*(send(method, body) for method, body in sent))
        seconds = time.perf_counter() - started
        # Still alive and correct afterwards.
        stub = inference_pb2_grpc.InferenceServiceStub(channels["raee.v1.InferenceService"])
        answer = await stub.Classify(
            inference_pb2.ClassifyRequest(task=args.task, text="a fine film"), timeout=60
        )
        alive = bool(answer.label)
        for channel in channels.values():
            await channel.close()
    finally:
        await pair.stop()
    after = metric_codes()
    metrics = {code: after[code] - before[code] for code in after if after[code] - before[code]}
    return {
        "requests": len(sent),
        "seconds": round(seconds, 1),
        "concurrency": args.concurrency,
        "seed": args.seed,
        "by_status_client": dict(client),
        "by_status_metrics": metrics,
        "by_method": {m: dict(c) for m, c in sorted(by_method.items())},
        "unknown_or_internal": client["UNKNOWN"]
        + client["INTERNAL"]
        + metrics.get("UNKNOWN", 0)
        + metrics.get("INTERNAL", 0),
        "alive_after": alive,
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    parser = demo_parser(__doc__)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seed", type=int, default=13)
    arguments = parser.parse_args()
    report = asyncio.run(run(arguments))
    emit(report, arguments.out)
    sys.exit(1 if report["unknown_or_internal"] or not report["alive_after"] else 0)
