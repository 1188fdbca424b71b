"""Faults under load, measured: the figures of docs/reliability.md (issue 13).

Both services run in this process on localhost, over the demo task (ingested into
a temporary store unless ``--home`` holds ``--task``). Three scenarios:

* ``retrieval-kill``: 16 clients with 10 s deadlines in RAEE mode; the retrieval
  service is stopped for 20 s, then restarted on the same port. Reports failed
  calls per phase, degraded answers, and throughput during the outage as a
  fraction of normal RAEE throughput.
* ``drain``: 64 concurrent FULL calls are queued, then the worker shuts down
  (what SIGTERM runs: health NOT_SERVING, stop with the grace period). Reports
  answered, refused up front (RESOURCE_EXHAUSTED) and dropped calls.
* ``fairness``: single FULL Classify calls, one after another, while idle and
  while a 1024-item FULL ClassifyBatch runs; reports their p50/p99 and the
  measured time of one micro-batch.

    python benchmarks/faults.py --out docs/results/faults.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _common import demo_parser, emit

from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair, start_pair
from retrieval_service import server as retrieval_server

TEXTS = [
    f"review {i}: the film was {word} ."
    for i, word in enumerate(["great", "awful", "moving", "dull", "fun", "a mess", "lovely", "boring"] * 8)
]


def ensure_task(home: Path | None, task: str) -> Path:
    if home is not None and any(v.task == task for v in open_store(home=home).list_tasks()):
        return home
    from ingest import run_ingest
    from raee.backbone import Backbone
    from raee.data import read_examples
    from raee.encoder import QueryEncoder
    from raee.tasks import TaskSpec

    folder = home or Path(tempfile.mkdtemp(prefix="raee-faults-"))
    spec = TaskSpec.from_file(DEMO_DIR / "task.yaml")
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", spec)
    run_ingest(
        spec,
        examples,
        backbone=Backbone.load("gemma-3-270m"),
        encoder=QueryEncoder(),
        store=open_store(home=folder),
        progress=False,
    )
    return folder


async def pair_on(home: Path, **inference: Any) -> ServicePair:
    return await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=home),
        InferenceSettings(**{"port": 0, "metrics_port": 0, **inference}),
    )


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else float("nan")


async def retrieval_kill(
    home: Path, task: str, clients: int, down_s: float, normal_s: float
) -> dict[str, Any]:
    pair = await pair_on(home)
    config = pair.retrieval.servicer.settings.model_copy(update={"port": pair.retrieval.port})
    phase = "warm-up"
    answered: dict[str, int] = collections.Counter()
    degraded: dict[str, int] = collections.Counter()
    failed: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    exits: dict[str, list[int]] = collections.defaultdict(list)
    stop = asyncio.Event()

    async def client_loop(index: int) -> None:
        async with InferenceClient(pair.inference_address, timeout_s=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                current = phase
                try:
                    answer = await client.classify(task, TEXTS[(index * 7 + n) % len(TEXTS)])
                except grpc.aio.AioRpcError as error:
                    failed[current][error.code().name] += 1
                    continue
                answered[current] += 1
                degraded[current] += int(answer.degraded)
                exits[current].append(answer.exit_layer)

    loops = [asyncio.ensure_future(client_loop(i)) for i in range(clients)]
    seconds: dict[str, float] = {}
    try:
        await asyncio.sleep(5)
        for name, action, duration in [
            ("normal", None, normal_s),
            ("retrieval down", "kill", down_s),
            ("retrieval back", "restart", normal_s),
        ]:
            if action == "kill":
                await pair.retrieval.stop(0)
            elif action == "restart":
                pair.retrieval = await retrieval_server.start(
                    config,
                    encoder=pair.retrieval.servicer.engine.encoder
                    if pair.retrieval.servicer.engine
                    else None,
                )
            phase = name
            started = time.perf_counter()
            await asyncio.sleep(duration)
            seconds[name] = time.perf_counter() - started
        phase = "ending"
    finally:
        stop.set()
        await asyncio.gather(*loops)
        await pair.stop()
    phases: dict[str, dict[str, Any]] = {
        name: {
            "seconds": round(seconds[name], 1),
            "answered": answered[name],
            "per_second": round(answered[name] / seconds[name], 1),
            "degraded": degraded[name],
            "failed": dict(failed[name]),
            "mean_exit_layer": round(float(np.mean(exits[name])), 2) if exits[name] else None,
        }
        for name in seconds
    }
    rates = {name: answered[name] / seconds[name] for name in seconds}
    return {
        "clients": clients,
        "deadline_s": 10,
        "phases": phases,
        "failed_calls_total": sum(sum(c.values()) for c in failed.values()),
        "degraded_throughput_fraction_of_normal": round(rates["retrieval down"] / rates["normal"], 2),
    }


async def drain(home: Path, task: str, calls: int, grace_s: float) -> dict[str, Any]:
    pair = await pair_on(home, grace_s=grace_s)
    try:
        async with InferenceClient(pair.inference_address, timeout_s=120) as client:
            for i in range(4):
                await client.classify(task, f"warm up {i}", "full")
            pending = [
                asyncio.ensure_future(client.classify(task, TEXTS[i % len(TEXTS)], "full"))
                for i in range(calls)
            ]
            await asyncio.sleep(0.3)
            queued = pair.inference.batcher.queued
            started = time.perf_counter()
            await pair.inference.stop(grace_s)
            stop_s = time.perf_counter() - started
            results = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await pair.retrieval.stop(0)
    codes = collections.Counter(
        r.code().name
        if isinstance(r, grpc.aio.AioRpcError)
        else ("OK" if not isinstance(r, BaseException) else type(r).__name__)
        for r in results
    )
    return {
        "calls": calls,
        "grace_s": grace_s,
        "queued_when_stopping": queued,
        "stop_seconds": round(stop_s, 2),
        "by_status": dict(codes),
        "dropped": sum(n for code, n in codes.items() if code not in ("OK", "RESOURCE_EXHAUSTED")),
    }


async def fairness(home: Path, task: str, singles: int, batch_items: int) -> dict[str, Any]:
    # The drain bound must admit the big batch: a grace period that covers it.
    pair = await pair_on(home, grace_s=900.0)
    try:
        async with InferenceClient(pair.inference_address, timeout_s=600) as client:
            for i in range(4):
                await client.classify(task, f"warm up {i}", "full")

            async def timed_singles() -> list[float]:
                times = []
                for i in range(singles):
                    started = time.perf_counter()
                    await client.classify(task, TEXTS[i % len(TEXTS)], "full")
                    times.append(time.perf_counter() - started)
                return times

            idle = await timed_singles()
            batcher = pair.inference.batcher
            batches_before = batcher.batches
            started = time.perf_counter()
            big = asyncio.ensure_future(
                client.classify_batch(
                    task, [TEXTS[i % len(TEXTS)] + f" {i}" for i in range(batch_items)], "full"
                )
            )
            await asyncio.sleep(1.0)
            busy = await timed_singles()
            big_answer = await big
            big_s = time.perf_counter() - started
            batches = batcher.batches - batches_before
    finally:
        await pair.stop()
    errors = sum(1 for r in big_answer.results if r.HasField("error"))
    return {
        "single_calls": singles,
        "idle_p50_ms": pct(idle, 50),
        "idle_p99_ms": pct(idle, 99),
        "busy_p50_ms": pct(busy, 50),
        "busy_p99_ms": pct(busy, 99),
        "big_batch_items": batch_items,
        "big_batch_seconds": round(big_s, 1),
        "big_batch_errors": errors,
        "micro_batches_run": batches,
        "micro_batch_ms_mean": round(1000 * big_s / max(batches, 1), 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    home = ensure_task(args.home, args.task)
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_average_before": os.getloadavg()}
    if "retrieval-kill" in args.scenarios:
        report["retrieval_kill"] = await retrieval_kill(home, args.task, 16, args.down_s, args.normal_s)
    if "drain" in args.scenarios:
        report["drain"] = await drain(home, args.task, 64, args.grace_s)
    if "fairness" in args.scenarios:
        report["fairness"] = await fairness(home, args.task, args.singles, 1024)
    report["load_average_after"] = os.getloadavg()
    return report


if __name__ == "__main__":
    parser = demo_parser(__doc__)
    parser.add_argument("--scenarios", nargs="+", default=["retrieval-kill", "drain", "fairness"])
    parser.add_argument("--down-s", type=float, default=20.0, help="how long retrieval stays down")
    parser.add_argument("--normal-s", type=float, default=20.0, help="length of the normal phases")
    parser.add_argument("--grace-s", type=float, default=10.0, help="shutdown grace of the drain scenario")
    parser.add_argument("--singles", type=int, default=40, help="single calls timed per phase")
    arguments = parser.parse_args()
    emit(asyncio.run(main(arguments)), arguments.out)
