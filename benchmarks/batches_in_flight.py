"""Throughput under concurrent clients with one micro-batch in flight against two.

With two batches in flight (``RAEE_BATCHES_IN_FLIGHT``) a RAEE batch's retrieval
call runs while the previous batch's forward pass does; a batch with nothing to
wait for first (FULL, FIXED) still queues behind the running one and keeps
filling. For each task/template pair this serves the eval's pair of services on
the embedded store, then runs rounds of ``--clients`` callers (the eval's
:func:`~evaluation.runner.clients_rate`) in RAEE and FULL mode, switching the
batcher between one and two batches in flight round by round, in alternating
order. It reports each setting's median requests/s per mode, RAEE ÷ FULL (the
eval's ``throughput_ratio_16``) and two ÷ one per mode.

    python benchmarks/batches_in_flight.py --pair cloze/mr --pair paper/sst2 \\
        --out docs/results/batches_in_flight.json

Pairs are ingested as ``raee eval`` ingests them (``--train-limit``), or reused
from ``--home`` when already there. Prints one JSON object (also written to
``--out`` when given).
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from _common import emit

from evaluation.runner import (
    EVAL_RETRIEVAL_TIMEOUT_MS,
    THROUGHPUT_CLIENTS,
    benchmark_tasks,
    clients_rate,
    ensure_ingested,
    read_task_examples,
    speed_sample,
)
from raee.backbone import Backbone
from raee.defaults import DEFAULT_BACKBONE
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee.v1 import inference_pb2_grpc
from raee_cli.pair import ServicePair, start_pair

MODES = ("raee", "full")
SETTINGS = (1, 2)


async def time_pair(
    pair: ServicePair, task: str, texts: list[str], clients: int, per_client: int, rounds: int
) -> dict[str, Any]:
    batcher = pair.inference.batcher
    rates: dict[int, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in SETTINGS}
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        await clients_rate(stub, task, texts, "raee", clients=clients, per_client=1)  # warm-up
        for round_ in range(rounds):
            for in_flight in SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]:
                batcher.max_in_flight = in_flight  # read before each batch starts
                for mode in MODES:
                    rate = await clients_rate(stub, task, texts, mode, clients=clients, per_client=per_client)
                    rates[in_flight][mode].append(rate)
    median = {k: {m: float(np.median(rates[k][m])) for m in MODES} for k in SETTINGS}
    return {
        "rps": {str(k): {m: round(median[k][m], 2) for m in MODES} for k in SETTINGS},
        "raee_over_full": {str(k): round(median[k]["raee"] / median[k]["full"], 3) for k in SETTINGS},
        "two_over_one": {m: round(median[2][m] / median[1][m], 3) for m in MODES},
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backbone = Backbone.load(DEFAULT_BACKBONE)
    encoder = QueryEncoder()
    store = open_store(home=args.home)
    tasks = []
    try:
        for family, name in (p.split("/") for p in args.pair):
            (task,) = benchmark_tasks(args.data_root, [family], [name])
            ensure_ingested(
                task, backbone=backbone, encoder=encoder, store=store, train_limit=args.train_limit
            )
            tasks.append(task)
    finally:
        store.close()
    pair = await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=args.home),
        InferenceSettings(
            port=0,
            metrics_port=0,
            http_port=-1,
            grace_s=600.0,
            retrieval_timeout_ms=EVAL_RETRIEVAL_TIMEOUT_MS,
        ),
        backbone=backbone,
        encoder=encoder,
    )
    report: dict[str, Any] = {
        "clients": args.clients,
        "per_client": args.per_client,
        "rounds": args.rounds,
        "train_limit": args.train_limit,
        "pairs": {},
    }
    try:
        for task in tasks:
            tests = read_task_examples(task.test, task.spec, None)
            texts = [tests[i].text for i in speed_sample(len(tests), args.clients * args.per_client)]
            report["pairs"][f"{task.family}/{task.task}"] = await time_pair(
                pair, task.spec.name, texts, args.clients, args.per_client, args.rounds
            )
    finally:
        await pair.stop()
    pairs = report["pairs"].values()
    report["mean"] = {
        "raee_over_full": {
            str(k): round(float(np.mean([p["raee_over_full"][str(k)] for p in pairs])), 3) for k in SETTINGS
        },
        "two_over_one": {m: round(float(np.mean([p["two_over_one"][m] for p in pairs])), 3) for m in MODES},
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pair", action="append", required=True, help="family/task, e.g. cloze/mr")
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--home", type=Path, default=Path(".raee"), help="the embedded store's folder")
    parser.add_argument("--train-limit", type=int, default=2000, help="as raee eval (make results)")
    parser.add_argument("--clients", type=int, default=THROUGHPUT_CLIENTS)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per setting and mode")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
