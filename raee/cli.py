"""The ``raee`` command line.

raee demo                        the main job: serve, ingest the demo task, classify over gRPC
raee ingest --task-spec ...      publish a task's exit information
raee tasks                       list published tasks
raee serve retrieval|inference   run one service
raee up                          run both services on the embedded store
raee classify --task T TEXT...   classify over gRPC
raee prepare                     convert and cache the backbone, check the encoder
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from raee.data import DataError, read_examples
from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER
from raee.demo import DEMO_DIR
from raee.logs import configure_logging
from raee.serving import config as service_config
from raee.store import StoreError, TaskNotFoundError
from raee.tasks import TaskSpec, TaskSpecError

if TYPE_CHECKING:
    from ingest.job import Shard

__all__ = ["DEMO_DIR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        return int(args.handler(args))
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors of the user's input or environment: a message and exit status 2, no traceback."""
    from raee.model_loading import BackboneLoadError  # imports torch: only once something failed

    return (TaskSpecError, DataError, StoreError, TaskNotFoundError, BackboneLoadError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raee", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the main job, on the embedded store")
    _store_flags(demo, url=False)
    _model_flags(demo)
    demo.set_defaults(handler=_demo)

    ingest = commands.add_parser("ingest", help="probe the backbone over labelled data; publish the task")
    _spec_flags(ingest)
    ingest.add_argument("--data", required=True, type=Path, help="JSONL, CSV or TSV with text and label")
    _store_flags(ingest)
    _model_flags(ingest)
    ingest.add_argument("--batch-size", type=int, default=16, help="examples per forward pass (16)")
    ingest.add_argument("--skip-invalid", action="store_true", help="ingest the valid rows, skip the rest")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    sharded = ingest.add_argument_group("sharded ingest (Qdrant server only; then `raee publish`)")
    sharded.add_argument("--version", help="the shared version id all shards write into")
    sharded.add_argument("--shard-index", type=int, help="this writer's shard, 0..count-1")
    sharded.add_argument("--shard-count", type=int, help="number of shards")
    sharded.add_argument("--no-publish", action="store_true", help="mark the shard done; do not publish")
    ingest.set_defaults(handler=_ingest)

    publish = commands.add_parser("publish", help="publish a sharded ingest once all shards are done")
    publish.add_argument("--task", required=True)
    publish.add_argument("--version", required=True)
    publish.add_argument("--expect-shards", type=int, required=True, help="number of shards written")
    _store_flags(publish)
    publish.set_defaults(handler=_publish)

    tasks = commands.add_parser("tasks", help="list published tasks")
    _store_flags(tasks)
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(handler=_tasks)

    serve = commands.add_parser("serve", help="run one service").add_subparsers(
        required=True, metavar="SERVICE"
    )
    retrieval = serve.add_parser("retrieval", help="the retrieval service (exit distributions)")
    service_config.add_flags(retrieval, service_config.RetrievalConfig)
    retrieval.set_defaults(handler=_serve_retrieval)
    inference = serve.add_parser("inference", help="the inference worker (truncated backbone)")
    service_config.add_flags(inference, service_config.InferenceConfig)
    inference.set_defaults(handler=_serve_inference)

    up = commands.add_parser("up", help="both services in one process, on the embedded store")
    _store_flags(up, url=False)
    up.add_argument("--retrieval-port", type=int, default=None, help="(50051)")
    up.add_argument("--inference-port", type=int, default=None, help="(50052)")
    up.set_defaults(handler=_up)

    classify = commands.add_parser("classify", help="classify texts through the inference worker")
    classify.add_argument("--task", required=True)
    classify.add_argument("--addr", default="localhost:50052", help="inference worker host:port")
    classify.add_argument("--mode", default="raee", choices=["raee", "full", "fixed"])
    classify.add_argument("--layer", type=int, default=None, help="exit layer for --mode fixed")
    classify.add_argument("--k", type=int, default=None, help="neighbours (service default 12)")
    classify.add_argument("--json", action="store_true", help="machine-readable output")
    classify.add_argument("--tls-ca", default="", help="CA of the worker's certificate: use TLS")
    # The token comes from the environment only, so that it never shows in `ps`.
    classify.add_argument("texts", nargs="+", metavar="TEXT")
    classify.set_defaults(handler=_classify)

    _add_eval_command(commands)

    prepare = commands.add_parser("prepare", help="convert and cache the backbone, check the encoder")
    _model_flags(prepare)
    prepare.set_defaults(handler=_prepare)
    return parser


def _add_eval_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``raee eval``, where the evaluation package is installed (the serving image leaves it out)."""
    try:
        from evaluation import BENCHMARK_TASKS, FAMILIES
    except ImportError:
        missing = commands.add_parser("eval", help="(needs the evaluation package: run it from a checkout)")
        missing.set_defaults(handler=_eval_missing)
        return
    evaluate = commands.add_parser("eval", help="RAEE against its baselines on benchmark tasks, via gRPC")
    evaluate.add_argument(
        "--data-root", type=Path, default=Path("../shared/data"), help="<task>/{train,test}.jsonl"
    )
    evaluate.add_argument("--family", action="append", choices=FAMILIES, help="(all)")
    evaluate.add_argument(
        "--task", action="append", help=f"({' '.join(BENCHMARK_TASKS)}); --task none: only --task-dir ones"
    )
    evaluate.add_argument(
        "--task-dir", action="append", type=Path, default=[], help="task.yaml + train/test.jsonl"
    )
    evaluate.add_argument("--train-limit", type=int, default=None, help="a seeded sample of N train rows")
    evaluate.add_argument("--tau-sample", type=int, default=500, help="train rows to choose tau on (500)")
    evaluate.add_argument("--latency-sample", type=int, default=50, help="texts timed one by one (50)")
    evaluate.add_argument("--out", type=Path, default=Path("docs/results"))
    _store_flags(evaluate, url=False)
    _model_flags(evaluate)
    evaluate.set_defaults(handler=_eval)


def _spec_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task spec (a file, or flags)")
    group.add_argument("--task-spec", type=Path, help="YAML or JSON task spec")
    group.add_argument("--task", help="task name (with --template and --label)")
    group.add_argument("--template", help="prompt template with a {text} slot")
    group.add_argument("--label", action="append", default=[], help="NAME=WORD, in label order")
    group.add_argument("--metric", default="accuracy", choices=["accuracy", "matthews_corrcoef"])


def _store_flags(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    group = parser.add_argument_group("exit store (embedded by default)")
    where = group.add_mutually_exclusive_group()
    if url:
        where.add_argument("--store-url", help="Qdrant URL ($RAEE_QDRANT_URL); local:PATH for local mode")
    where.add_argument("--home", type=Path, help="embedded store's data folder ($RAEE_HOME, ./.raee)")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    defaults = service_config.load(service_config.InferenceConfig)
    encoder = service_config.load(service_config.RetrievalConfig).encoder
    group = parser.add_argument_group("models")
    group.add_argument("--backbone", default=defaults.backbone, help=f"({DEFAULT_BACKBONE}; $RAEE_BACKBONE)")
    group.add_argument("--encoder", default=encoder, help=f"({DEFAULT_ENCODER}; $RAEE_ENCODER)")


def _spec_from_args(args: argparse.Namespace) -> TaskSpec:
    if args.task_spec is not None:
        if args.task or args.template or args.label:
            raise TaskSpecError("give either --task-spec or --task/--template/--label, not both")
        return TaskSpec.from_file(args.task_spec)
    if not (args.task and args.template and args.label):
        raise TaskSpecError("give --task-spec FILE, or all of --task, --template and --label")
    return TaskSpec.from_flags(args.task, args.template, args.label, args.metric)


def _ingest(args: argparse.Namespace) -> int:
    from ingest import render_summary, run_ingest
    from raee.backbone import Backbone
    from raee.encoder import QueryEncoder
    from raee.store import open_store

    spec = _spec_from_args(args)
    examples, errors = read_examples(args.data, spec)
    if errors and (not args.skip_invalid or not examples):
        raise DataError(errors)
    for error in errors:
        logging.getLogger("raee.ingest").warning("skipped %s", error)
    shard = _shard_from_args(args)
    backbone = Backbone.load(args.backbone)
    encoder = QueryEncoder(args.encoder)
    store = open_store(args.store_url, home=args.home)
    try:
        result = run_ingest(
            spec,
            examples,
            backbone=backbone,
            encoder=encoder,
            store=store,
            batch_size=args.batch_size,
            skipped=len(errors),
            progress=not args.no_progress,
            extra_stats={"data_file": str(args.data)},
            shard=shard,
        )
    finally:
        store.close()
    print(render_summary(result))
    return 0


def _shard_from_args(args: argparse.Namespace) -> Shard | None:
    from ingest.job import Shard

    sharding = (args.version, args.shard_index, args.shard_count)
    if all(value is None for value in sharding) and not args.no_publish:
        return None
    if any(value is None for value in sharding) or not args.no_publish:
        raise ValueError(
            "a sharded ingest needs all of --version, --shard-index, --shard-count, --no-publish"
        )
    return Shard(version=args.version, index=args.shard_index, count=args.shard_count)


def _publish(args: argparse.Namespace) -> int:
    from raee.store import open_store

    store = open_store(args.store_url, home=args.home)
    try:
        info = store.publish_shards(args.task, args.version, args.expect_shards)
    finally:
        store.close()
    shards = args.expect_shards
    print(f"task {info.task}: published version {info.version} ({info.points} points, {shards} shards)")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from raee.store import open_store

    store = open_store(args.store_url, home=args.home)
    try:
        versions = store.list_tasks()
    finally:
        store.close()
    if args.json:
        print(json.dumps([v.to_dict() for v in versions], indent=2))
        return 0
    if not versions:
        print(f"no tasks published in {store.location}")
    for v in versions:
        print(f"{v.task:24} {v.points:7d} points  version {v.version}  {v.backbone_id}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from raee.demo.run import run_demo

    return asyncio.run(run_demo(args.home, args.backbone, args.encoder))


def _serve_retrieval(args: argparse.Namespace) -> int:
    from retrieval_service.server import serve

    asyncio.run(serve(service_config.load(service_config.RetrievalConfig, args)))
    return 0


def _serve_inference(args: argparse.Namespace) -> int:
    from inference_service.server import serve

    asyncio.run(serve(service_config.load(service_config.InferenceConfig, args)))
    return 0


def _up(args: argparse.Namespace) -> int:
    retrieval = service_config.load(
        service_config.RetrievalConfig, None, port=args.retrieval_port, home=args.home and str(args.home)
    )
    inference = service_config.load(service_config.InferenceConfig, None, port=args.inference_port)
    asyncio.run(_run_up(retrieval, inference))
    return 0


async def _run_up(
    retrieval: service_config.RetrievalConfig, inference: service_config.InferenceConfig
) -> None:
    from raee.pair import start_pair
    from raee.serving.metrics import serve_metrics
    from raee.serving.server import wait_for_shutdown_signal

    serve_metrics(retrieval.metrics_port)
    pair = await start_pair(retrieval, inference)
    print(
        f"raee up: inference worker on {pair.inference_address}, retrieval service on "
        f"{pair.retrieval_address}, metrics on :{retrieval.metrics_port}; Ctrl-C stops",
        flush=True,
    )
    await wait_for_shutdown_signal()
    await pair.stop(inference.grace_s)


def _classify(args: argparse.Namespace) -> int:
    return asyncio.run(_run_classify(args))


async def _run_classify(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf.json_format import MessageToDict

    from raee.client import InferenceClient

    token = os.environ.get("RAEE_CLIENT_TOKEN", "")
    async with InferenceClient(args.addr, token=token, tls_ca=args.tls_ca) as client:
        for text in args.texts:
            try:
                answer = await client.classify(args.task, text, args.mode, args.layer, args.k)
            except grpc.aio.AioRpcError as error:
                print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps(MessageToDict(answer, preserving_proto_field_name=True)))
                continue
            note = f"  DEGRADED ({answer.degraded_reason})" if answer.degraded else ""
            print(
                f"{answer.label}\texit {answer.exit_layer}/{answer.num_layers}\t"
                f"retrieval {answer.retrieval_ms:.1f} ms\tforward {answer.forward_ms:.1f} ms\t{text}{note}"
            )
    return 0


def _eval_missing(args: argparse.Namespace) -> int:
    print(
        "raee eval: the evaluation package is not installed here (the serving image ships without it);"
        " run it from a source checkout",
        file=sys.stderr,
    )
    return 2


def _eval(args: argparse.Namespace) -> int:
    from evaluation import BENCHMARK_TASKS, FAMILIES
    from evaluation.report import markdown
    from evaluation.runner import benchmark_tasks, folder_task, run_eval
    from raee.paths import raee_home

    task_names = args.task or list(BENCHMARK_TASKS)
    names = [] if task_names == ["none"] else task_names
    tasks = benchmark_tasks(args.data_root, args.family or list(FAMILIES), names)
    tasks += [folder_task(folder) for folder in args.task_dir]
    if not tasks:
        raise ValueError("task: nothing to evaluate")
    summary = asyncio.run(
        run_eval(
            tasks,
            home=raee_home(args.home),
            out=args.out,
            command="raee " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "raee eval",
            backbone_source=args.backbone,
            encoder_source=args.encoder,
            train_limit=args.train_limit,
            tau_sample=args.tau_sample,
            latency_sample=args.latency_sample,
        )
    )
    print(markdown(summary))
    print(f"written to {args.out}/")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from raee.backbone import Backbone
    from raee.encoder import QueryEncoder

    backbone = Backbone.load(args.backbone)
    encoder = QueryEncoder(args.encoder)
    print(f"backbone {backbone.id} ready\nencoder {encoder.id} ready")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
