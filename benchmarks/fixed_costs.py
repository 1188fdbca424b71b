"""The fixed costs of one Classify at batch 1, before and after issue 11, interleaved.

"Before" is the code at ``--base`` (a git commit): its micro-batcher fill loop and
its worker ``_predict`` (which tokenised each prompt twice) are loaded from git
and swapped in; "after" is this checkout. Each measurement alternates the two
request by request, so noise hits both alike. Pieces, all at batch 1:

* ``batcher_ms``: enqueue to dispatch of a lone request (a no-op process);
* ``tokenise_ms``: tokenising one prompt;
* ``predict_ms``: the worker's ``_predict`` (tokenisation, limit check, forward
  to ``--exit``), in process;
* ``classify_ms``: a RAEE Classify through gRPC on localhost, both services in
  this process (``retrieval_ms`` is the worker's retrieval call inside it);
* ``classify_fixed_ms``: a FIXED(``--exit``) Classify, the same way: the fixed
  costs without retrieval.

With ``--overlap`` it also times RAEE Classify with retrieval overlapped
(``RAEE_OVERLAP_RETRIEVAL``) against not, at batch 1 and under ``--clients``
concurrent clients. The task must be ingested in ``--home`` first:

    raee ingest --task-spec examples/sst2.yaml --data benchmarks/data/sst2/train.jsonl
    python benchmarks/fixed_costs.py --out docs/results/fixed_costs.json --overlap

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from types import ModuleType
from typing import Any

import numpy as np
from _common import emit, read_valid, task_parser, timed

from inference_service import batcher as batcher_module
from inference_service import worker as worker_module
from inference_service.batcher import MicroBatcher
from raee.backbone import TaskProbe
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.pair import ServicePair, start_pair

VARIANTS = ("before", "after")


def load_at(commit: str, path: str, name: str) -> ModuleType:
    """Module ``path`` as it was at ``commit``, under the name ``name``."""
    source = subprocess.run(["git", "show", f"{commit}:{path}"], check=True, capture_output=True, text=True)
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    exec(compile(source.stdout, f"{commit}:{path}", "exec"), module.__dict__)
    return module


def _one_exit_per_call(predict: Callable[..., Any]) -> Callable[..., Any]:
    """The base commit's ``_predict`` took one exit for its group; today's takes one per text."""

    def call(probe: TaskProbe, texts: list[str], exits: list[int]) -> Any:
        (exit_layer,) = set(exits)  # batch-1 calls only
        return predict(probe, texts, exit_layer)

    return call


class Variants:
    """Swaps the base commit's batcher fill loop and ``_predict`` in and out."""

    def __init__(self, base: str) -> None:
        old_batcher = load_at(base, "inference_service/batcher.py", "_before_batcher")
        old_worker = load_at(base, "inference_service/worker.py", "_before_worker")
        self.next_batch: dict[str, Any] = {
            "before": old_batcher.MicroBatcher._next_batch,
            "after": batcher_module.MicroBatcher._next_batch,
        }
        self.predict: dict[str, Callable[..., Any]] = {
            "before": _one_exit_per_call(old_worker._predict),
            "after": worker_module._predict,
        }

    @contextmanager
    def use(self, variant: str) -> Iterator[None]:
        MicroBatcher._next_batch = self.next_batch[variant]  # type: ignore[method-assign]
        worker_module._predict = self.predict[variant]
        try:
            yield
        finally:
            MicroBatcher._next_batch = self.next_batch["after"]  # type: ignore[method-assign]
            worker_module._predict = self.predict["after"]


async def batcher_delay(variants: Variants, repeats: int, max_wait_s: float) -> dict[str, list[float]]:
    """Enqueue-to-dispatch of a lone request."""
    seen: dict[str, list[float]] = {v: [] for v in VARIANTS}
    dispatched_at: list[float] = []

    async def process(items: Sequence[float]) -> list[float]:
        dispatched_at.append(time.perf_counter())
        return list(items)

    for _ in range(repeats):
        for variant in VARIANTS:
            with variants.use(variant):
                batcher: MicroBatcher[float, float] = MicroBatcher(
                    process, max_batch=16, max_wait_s=max_wait_s, max_queue=16
                )
                batcher.start()
                try:
                    for _ in range(5):
                        started = time.perf_counter()
                        await batcher.submit(started)
                        seen[variant].append(1000 * (dispatched_at[-1] - started))
                finally:
                    await batcher.close()
    return seen


def in_process(
    variants: Variants, probe: TaskProbe, texts: list[str], exit_layer: int
) -> dict[str, dict[str, list[float]]]:
    """Tokenisation and the worker's ``_predict`` per text, variants alternating."""
    tokenise = [timed(partial(probe.tokenize, [text]))[1] for text in texts]
    predict: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for index, order in orders(len(texts)):
        text = texts[index]
        for variant in order:
            with variants.use(variant):
                call = partial(worker_module._predict, probe, [text], [exit_layer])
                predict[variant].append(timed(call)[1])
    return {"tokenise_ms": {"after": tokenise}, "predict_ms": predict}


def orders(count: int) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Index and variant order per round; the order flips each round, so neither always goes first."""
    for index in range(count):
        yield index, VARIANTS if index % 2 == 0 else VARIANTS[::-1]


async def classify(
    variants: Variants, client: InferenceClient, task: str, texts: list[str], exit_layer: int
) -> dict[str, dict[str, list[float]]]:
    """RAEE and FIXED(``exit_layer``) Classify through gRPC, variants alternating request by request."""
    pieces: dict[str, dict[str, list[float]]] = {
        name: {v: [] for v in VARIANTS}
        for name in ("classify_ms", "retrieval_ms", "classify_fixed_ms", "fixed_forward_ms")
    }
    exits: list[float] = []
    for index, order in orders(len(texts)):
        for variant in order:
            with variants.use(variant):
                started = time.perf_counter()
                answer = await client.classify(task, texts[index], "raee")
                pieces["classify_ms"][variant].append(1000 * (time.perf_counter() - started))
                pieces["retrieval_ms"][variant].append(answer.retrieval_ms)
                exits.append(answer.exit_layer)
                started = time.perf_counter()
                fixed = await client.classify(task, texts[index], "fixed", exit_layer)
                pieces["classify_fixed_ms"][variant].append(1000 * (time.perf_counter() - started))
                pieces["fixed_forward_ms"][variant].append(fixed.forward_ms)
    pieces["exit"] = {"after": exits}
    return pieces


async def overlap_batch1(
    pair: ServicePair, client: InferenceClient, task: str, texts: list[str]
) -> dict[str, list[float]]:
    seen: dict[str, list[float]] = {"off": [], "on": []}
    for index, order in orders(len(texts)):
        text = texts[index]
        for setting in ("off", "on") if order == VARIANTS else ("on", "off"):
            pair.inference.worker.overlap_retrieval = setting == "on"
            started = time.perf_counter()
            await client.classify(task, text, "raee")
            seen[setting].append(1000 * (time.perf_counter() - started))
    pair.inference.worker.overlap_retrieval = False
    return seen


async def overlap_load(
    pair: ServicePair, task: str, texts: list[str], clients: int, per_client: int, rounds: int
) -> dict[str, list[float]]:
    """Requests per second under ``clients`` closed-loop clients, settings alternating by round."""
    rates: dict[str, list[float]] = {"off": [], "on": []}

    async def one_client(client: InferenceClient, offset: int) -> None:
        for i in range(per_client):
            await client.classify(task, texts[(offset * per_client + i) % len(texts)], "raee")

    connections = [InferenceClient(pair.inference_address) for _ in range(clients)]
    try:
        for _ in range(rounds):
            for setting in rates:
                pair.inference.worker.overlap_retrieval = setting == "on"
                started = time.perf_counter()
                await asyncio.gather(*(one_client(c, n) for n, c in enumerate(connections)))
                rates[setting].append(clients * per_client / (time.perf_counter() - started))
    finally:
        pair.inference.worker.overlap_retrieval = False
        for connection in connections:
            await connection.close()
    return rates


def overlap_report(
    batch1: dict[str, list[float]], rates: dict[str, list[float]], clients: int, rounds: int
) -> dict[str, Any]:
    rps = {setting: float(np.median(xs)) for setting, xs in rates.items()}
    return {
        "batch1_p50_ms": {setting: p50(xs) for setting, xs in batch1.items()},
        "batch1_ratio_on_over_off": p50(batch1["on"]) / p50(batch1["off"]),
        f"throughput_{clients}_clients_rps": rps,
        f"throughput_ratio_on_over_off_{clients}": rps["on"] / rps["off"],
        "rounds": rounds,
    }


def p50(values: list[float]) -> float:
    return float(np.percentile(values, 50))


def summarise(pieces: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Medians per piece and variant, each piece's share of the Classify median, after/before ratios."""
    medians = {piece: {v: p50(xs) for v, xs in per.items()} for piece, per in pieces.items()}
    report: dict[str, Any] = {"p50_ms": medians, "share_of_classify": {}, "ratio_after_over_before": {}}
    for piece, per in medians.items():
        report["share_of_classify"][piece] = {
            v: ms / medians["classify_ms"][v if v in medians["classify_ms"] else "after"]
            for v, ms in per.items()
        }
        if "before" in per:
            report["ratio_after_over_before"][piece] = per["after"] / per["before"]
    # A FIXED call: the batcher's wait, the forward pass (as the worker timed it in the
    # same calls) and the rest (tokenisation, two gRPC hops, conversions, the event loop).
    fixed, forward = medians["classify_fixed_ms"], medians["fixed_forward_ms"]
    report["fixed_call_breakdown_ms"] = {
        v: {
            "batcher": medians["batcher_ms"][v],
            "forward": forward[v],
            "rest": fixed[v] - medians["batcher_ms"][v] - forward[v],
            "total": fixed[v],
        }
        for v in VARIANTS
    }
    return report


async def run(args: argparse.Namespace) -> dict[str, Any]:
    spec = open_store(home=args.home).get_task(args.task).spec
    texts = [e.text for e in read_valid(args.data, spec, args.limit)]
    variants = Variants(args.base)
    settings = InferenceSettings(
        port=0, metrics_port=0, http_port=-1, max_batch=16, max_wait_ms=args.max_wait_ms
    )
    pair = await start_pair(RetrievalSettings(port=0, metrics_port=0, home=args.home), settings)
    try:
        probe = pair.inference.worker.backbone.for_task(spec)
        pieces: dict[str, dict[str, list[float]]] = {}
        pieces["batcher_ms"] = await batcher_delay(variants, args.repeats, settings.max_wait_ms / 1000)
        in_process(variants, probe, texts[:4], args.exit)  # warm-up
        pieces.update(in_process(variants, probe, texts, args.exit))
        async with InferenceClient(pair.inference_address) as client:
            await classify(variants, client, args.task, texts[:4], args.exit)  # warm-up
            pieces.update(await classify(variants, client, args.task, texts, args.exit))
            overlap: dict[str, Any] = {}
            if args.overlap:
                batch1 = await overlap_batch1(pair, client, args.task, texts)
                rates = await overlap_load(pair, args.task, texts, args.clients, args.per_client, args.rounds)
                overlap = {
                    "batch1_p50_ms": {s: p50(xs) for s, xs in batch1.items()},
                    "batch1_ratio_on_over_off": p50(batch1["on"]) / p50(batch1["off"]),
                    f"throughput_{args.clients}_clients_rps": {
                        s: float(np.median(xs)) for s, xs in rates.items()
                    },
                    f"throughput_ratio_on_over_off_{args.clients}": float(
                        np.median(rates["on"]) / np.median(rates["off"])
                    ),
                    "rounds": args.rounds,
                }
    finally:
        await pair.stop()
    exits = pieces.pop("exit")["after"]
    report = summarise(pieces)
    report.update(
        task=args.task,
        base=args.base,
        requests=len(texts),
        exit_for_predict=args.exit,
        raee_mean_exit=float(np.mean(exits)),
        max_wait_ms=args.max_wait_ms,
    )
    if overlap:
        report["overlap"] = overlap
    return report


def main() -> None:
    parser = task_parser(__doc__)
    parser.add_argument("--base", default="2e30080", help="the commit measured as 'before'")
    parser.add_argument("--limit", type=int, default=200, help="texts for the batch-1 measurements")
    parser.add_argument("--exit", type=int, default=1, help="the exit of the in-process forward")
    parser.add_argument("--repeats", type=int, default=40, help="batcher rounds (5 calls each)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--overlap", action="store_true", help="also time overlapped retrieval, on vs off")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
