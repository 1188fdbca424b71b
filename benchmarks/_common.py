"""What the benchmark scripts share: their common flags, the texts they time, their report.

The scripts run standalone (``python benchmarks/<name>.py``), which puts this
folder on ``sys.path``; they import this module as ``_common``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raee.data import Example, read_examples
from raee.tasks import TaskSpec

if TYPE_CHECKING:
    from evaluation.runner import EvalTask
    from inference_service.server import InferenceServer
    from raee.encoder import QueryEncoder
    from raee_cli.pair import ServicePair

# The eval's 16-client round runs in two modes; their ratio is its throughput_ratio_16.
LOAD_MODES = ("raee", "full")


def task_parser(doc: str | None, task: str = "sst2", data: Path | None = None) -> argparse.ArgumentParser:
    """A parser with the flags of a benchmark over a published task: ``--task``, ``--data``,
    ``--home`` (its embedded store) and ``--out`` (where the report also goes)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=task, help="a published task")
    parser.add_argument(
        "--data", type=Path, default=data or Path("benchmarks/data/sst2/test.jsonl"), help="texts to send"
    )
    parser.add_argument("--home", type=Path, default=Path(".raee"), help="the embedded store's folder")
    parser.add_argument("--out", type=Path, help="also write the report here")
    return parser


def demo_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the flags of a benchmark that serves the demo unless told otherwise:
    ``--task``, ``--home`` (when absent, the demo is ingested into a private store) and ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="demo-sentiment")
    parser.add_argument(
        "--home", type=Path, help="an embedded store holding --task (default: ingest the demo)"
    )
    parser.add_argument("--out", type=Path, help="also write the report here")
    return parser


def read_valid(path: Path, spec: TaskSpec, limit: int | None = None) -> list[Example]:
    """The first ``limit`` rows of ``path`` (all when ``None``); any invalid row stops the benchmark."""
    examples, errors = read_examples(path, spec)
    if errors:
        raise SystemExit(f"{path}: {len(errors)} invalid rows, first: {errors[0]}")
    return examples[:limit] if limit else examples


def emit(report: dict[str, Any], out: Path | None) -> None:
    """Print the report as JSON; also write it to ``out`` when given."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.write_text(text + "\n")


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """``call()``'s value and the milliseconds it took."""
    started = time.perf_counter()
    value = call()
    return value, 1000 * (time.perf_counter() - started)


def encoder_running(encoder: QueryEncoder, graph: Path) -> QueryEncoder:
    """A copy of ``encoder`` that runs ``graph`` instead of its own export.

    Tokenising and the runs of similar length stay the encoder's own, so two graphs
    compared this way differ only in the graph.
    """
    from raee import encoder_onnx

    other = copy.copy(encoder)
    other._run_onnx = other._run_lone = functools.partial(encoder_onnx.run, encoder_onnx.session(graph))
    return other


def load_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the flags of a benchmark that loads the eval's pair of services with the
    eval's concurrent clients: ``--pair`` (repeatable), ``--data-root``, ``--home``,
    ``--train-limit``, ``--clients``, ``--per-client``, ``--rounds`` and ``--out``."""
    from evaluation.runner import THROUGHPUT_CLIENTS

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", action="append", required=True, help="family/task, e.g. cloze/mr")
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--home", type=Path, default=Path(".raee"), help="the embedded store's folder")
    parser.add_argument("--train-limit", type=int, default=2000, help="as raee eval (make results)")
    parser.add_argument("--clients", type=int, default=THROUGHPUT_CLIENTS)
    parser.add_argument("--per-client", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="rounds per setting and mode")
    parser.add_argument("--out", type=Path)
    return parser


@contextlib.asynccontextmanager
async def eval_pair(args: argparse.Namespace) -> AsyncIterator[tuple[ServicePair, list[EvalTask]]]:
    """The eval's pair of services on the embedded store at ``args.home``, serving ``args.pair``
    (ingested as ``raee eval`` ingests them, or reused when already there)."""
    from evaluation.runner import benchmark_tasks, ensure_ingested, eval_worker_settings
    from raee.backbone import Backbone
    from raee.defaults import DEFAULT_BACKBONE
    from raee.encoder import QueryEncoder
    from raee.settings import RetrievalSettings
    from raee.store import open_store
    from raee_cli.pair import start_pair

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
        eval_worker_settings(),
        backbone=backbone,
        encoder=encoder,
    )
    try:
        yield pair, tasks
    finally:
        await pair.stop()


@contextlib.asynccontextmanager
async def second_worker(pair: ServicePair) -> AsyncIterator[InferenceServer]:
    """Another worker as the eval's, on the same backbone, calling ``pair``'s retrieval service."""
    from evaluation.runner import eval_worker_settings
    from inference_service import server as inference_server

    settings = eval_worker_settings().model_copy(update={"retrieval_addr": pair.retrieval_address})
    worker = await inference_server.start(settings, backbone=pair.inference.worker.backbone)
    try:
        yield worker
    finally:
        await worker.stop(5.0)


def load_texts(task: EvalTask, count: int) -> list[str]:
    """The test texts the eval's timed rounds send for ``task``."""
    from evaluation.runner import read_task_examples, speed_sample

    tests = read_task_examples(task.test, task.spec, None)
    return [tests[i].text for i in speed_sample(len(tests), count)]


async def interleaved_rates(
    task: str,
    texts: list[str],
    settings: Mapping[str, Callable[[], str]],
    args: argparse.Namespace,
) -> dict[str, dict[str, float]]:
    """Median requests/s of ``args.clients`` callers per setting and mode.

    ``settings`` maps each setting's name to what switches to it and returns the
    address of the worker to call. Each round runs every setting, in alternating
    order, and under each setting a RAEE round, then a FULL one, as the eval
    alternates them (:func:`~evaluation.runner.clients_rate`).
    """
    import grpc
    import numpy as np

    from evaluation.runner import clients_rate
    from raee.v1 import inference_pb2_grpc

    rates: dict[str, dict[str, list[float]]] = {name: {m: [] for m in LOAD_MODES} for name in settings}
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        for switch in settings.values():  # warm-up, each worker
            address = switch()
            channels.setdefault(address, grpc.aio.insecure_channel(address))
            stub = inference_pb2_grpc.InferenceServiceStub(channels[address])
            await clients_rate(stub, task, texts, "raee", clients=args.clients, per_client=1)
        order = list(settings)
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                stub = inference_pb2_grpc.InferenceServiceStub(channels[settings[name]()])
                for mode in LOAD_MODES:
                    rate = await clients_rate(
                        stub, task, texts, mode, clients=args.clients, per_client=args.per_client
                    )
                    rates[name][mode].append(rate)
    finally:
        for channel in channels.values():
            await channel.close()
    return {name: {m: float(np.median(rates[name][m])) for m in LOAD_MODES} for name in settings}


def load_report(args: argparse.Namespace) -> dict[str, Any]:
    """The head of a load benchmark's report: how it loaded the services; ``pairs`` to fill."""
    return {
        "clients": args.clients,
        "per_client": args.per_client,
        "rounds": args.rounds,
        "train_limit": args.train_limit,
        "pairs": {},
    }


def compared(median: dict[str, dict[str, float]], base: str, other: str, key: str) -> dict[str, Any]:
    """One pair's entry: each setting's requests/s per mode, RAEE ÷ FULL, and ``other`` ÷ ``base``."""
    return {
        "rps": {k: {m: round(median[k][m], 2) for m in LOAD_MODES} for k in median},
        "raee_over_full": {k: round(median[k]["raee"] / median[k]["full"], 3) for k in median},
        key: {m: round(median[other][m] / median[base][m], 3) for m in LOAD_MODES},
    }


def compared_mean(pairs: list[dict[str, Any]], settings: Sequence[str], key: str) -> dict[str, Any]:
    """The mean over pairs of :func:`compared`'s RAEE ÷ FULL per setting and its ``key`` ratio."""
    import numpy as np

    return {
        "raee_over_full": {
            k: round(float(np.mean([p["raee_over_full"][k] for p in pairs])), 3) for k in settings
        },
        key: {m: round(float(np.mean([p[key][m] for p in pairs])), 3) for m in LOAD_MODES},
    }


async def settings_report(
    args: argparse.Namespace,
    tasks: Sequence[EvalTask],
    settings: Mapping[str, Callable[[], str]],
    key: str,
    extra: Callable[[EvalTask], Awaitable[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """A load benchmark's report: per pair, :func:`interleaved_rates` under the two
    ``settings`` (the first is the base of ``key``, their ratio), then ``extra``'s
    entries; and the mean over the pairs."""
    base, other = settings
    report = load_report(args)
    for task in tasks:
        texts = load_texts(task, args.clients * args.per_client)
        median = await interleaved_rates(task.spec.name, texts, settings, args)
        entry = compared(median, base, other, key)
        if extra is not None:
            entry.update(await extra(task))
        report["pairs"][f"{task.family}/{task.task}"] = entry
    report["mean"] = compared_mean(list(report["pairs"].values()), (base, other), key)
    return report
