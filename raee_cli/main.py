"""The ``raee`` command line.

raee demo                        the main job: serve, ingest the demo task, classify over gRPC
raee ingest --task-spec ...      publish a task's exit information
raee tasks                       list published tasks
raee serve retrieval|inference   run one service
raee up                          run both services on the embedded store
raee publish --task T --version V --expect-shards N
                                 publish a sharded ingest once every shard is done
raee classify --task T TEXT...   classify over gRPC (the slim raee_client; --file texts.jsonl)
raee prepare                     convert and cache the backbone, export the encoder
raee config                      every setting as this process sees it
raee eval                        RAEE against its baselines (when the evaluation package is installed)

Settings come from RAEE_* environment variables (docs/configuration.md); flags override them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from raee.data import DataError, read_examples
from raee.errors import BackboneLoadError, StoreError, TaskNotFoundError, TaskSpecError
from raee.logs import configure_logging
from raee.settings import (
    ClientSettings,
    InferenceSettings,
    LogSettings,
    RetrievalSettings,
    TracingSettings,
    load,
)
from raee.tasks import TaskSpec
from raee_cli.demo import DEMO_DIR
from raee_cli.flags import (
    add_model_flags,
    add_settings_flags,
    add_store_flags,
    models_from_args,
    settings_from_args,
    store_from_args,
)

if TYPE_CHECKING:
    from ingest.job import Shard

__all__ = ["DEMO_DIR", "build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        logs = load(LogSettings)
        configure_logging(logs.log_level, logs.log_format)
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
    return (TaskSpecError, DataError, StoreError, TaskNotFoundError, BackboneLoadError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raee", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="the main job, on the embedded store")
    add_store_flags(demo, url=False)
    add_model_flags(demo)
    demo.set_defaults(handler=_demo)

    ingest = commands.add_parser("ingest", help="probe the backbone over labelled data; publish the task")
    _spec_flags(ingest)
    ingest.add_argument(
        "--data",
        required=True,
        help="JSONL, CSV or TSV with text and label: a file, s3://bucket/key (endpoint and "
        "credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), or - for standard input",
    )
    ingest.add_argument(
        "--data-format",
        choices=["jsonl", "csv", "tsv"],
        help="format of --data (default: its suffix; - : jsonl)",
    )
    add_store_flags(ingest)
    add_model_flags(ingest)
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
    add_store_flags(publish)
    publish.set_defaults(handler=_publish)

    tasks = commands.add_parser("tasks", help="list published tasks")
    add_store_flags(tasks)
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(handler=_tasks)

    serve = commands.add_parser("serve", help="run one service").add_subparsers(
        required=True, metavar="SERVICE"
    )
    retrieval = serve.add_parser("retrieval", help="the retrieval service (exit distributions)")
    add_settings_flags(retrieval, RetrievalSettings)
    retrieval.set_defaults(handler=_serve_retrieval)
    inference = serve.add_parser("inference", help="the inference worker (truncated backbone)")
    add_settings_flags(inference, InferenceSettings)
    inference.set_defaults(handler=_serve_inference)

    up = commands.add_parser("up", help="both services in one process, on the embedded store")
    add_store_flags(up, url=False)
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
    classify.add_argument(
        "--file", type=Path, default=None, help='JSONL: a string or {"text": ...} a line (ClassifyBatch)'
    )
    classify.add_argument("texts", nargs="*", metavar="TEXT")
    classify.set_defaults(handler=_classify)

    prepare = commands.add_parser("prepare", help="convert and cache the backbone, export the encoder")
    add_model_flags(prepare)
    prepare.set_defaults(handler=_prepare)

    config = commands.add_parser("config", help="every setting as this process sees it (secrets masked)")
    config.add_argument(
        "--write-reference", type=Path, metavar="DOC", help="rewrite the settings table in DOC instead"
    )
    config.set_defaults(handler=_config)
    _add_plugin_commands(commands)
    return parser


def _add_plugin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Subcommands that packages above the CLI contribute (entry points ``raee.commands``).

    Each entry point is ``register(commands)``; one whose package is not installed
    (the serving image has no evaluation code) is left out of ``raee --help``.
    """
    for entry in entry_points(group="raee.commands"):
        try:
            register = entry.load()
        except ImportError:
            continue
        register(commands)


def _spec_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task spec (a file, or flags)")
    group.add_argument("--task-spec", type=Path, help="YAML or JSON task spec")
    group.add_argument("--task", help="task name (with --template and --label)")
    group.add_argument("--template", help="prompt template with a {text} slot")
    group.add_argument("--label", action="append", default=[], help="NAME=WORD, in label order")
    group.add_argument("--metric", default="accuracy", choices=["accuracy", "matthews_corrcoef"])


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
    from ingest.job import check_prompt_lengths
    from raee.backbone import DEFAULT_MAX_TOKENS, Backbone, backbone_tokenizer, prompt_token_lengths
    from raee.encoder import QueryEncoder
    from raee.store import open_store_from

    spec = _spec_from_args(args)
    examples, errors = read_examples(args.data, spec, data_format=args.data_format)
    shard = _shard_from_args(args)
    models = models_from_args(args)
    # Prompt lengths need the tokenizer only: checked before the backbone loads.
    lengths = prompt_token_lengths(backbone_tokenizer(models.backbone), spec, [e.text for e in examples])
    examples, too_long = check_prompt_lengths(examples, lengths, DEFAULT_MAX_TOKENS, args.data)
    errors = sorted([*errors, *too_long], key=lambda error: error.line)
    if errors and (not args.skip_invalid or not examples):
        raise DataError(errors)
    for error in errors:
        logging.getLogger("raee.ingest").warning("skipped %s", error)
    backbone = Backbone.load(models.backbone)
    encoder = QueryEncoder(models.encoder, runtime=models.encoder_runtime, spin="never")  # batches
    store = open_store_from(store_from_args(args))
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
    from raee.store import open_store_from

    store = open_store_from(store_from_args(args))
    try:
        info = store.publish_shards(args.task, args.version, args.expect_shards)
    finally:
        store.close()
    shards = args.expect_shards
    print(f"task {info.task}: published version {info.version} ({info.points} points, {shards} shards)")
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from raee.store import open_store_from

    store = open_store_from(store_from_args(args))
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
    from raee_cli.demo.run import run_demo

    models = models_from_args(args)
    return asyncio.run(
        run_demo(store_from_args(args).home, models.backbone, models.encoder, models.encoder_runtime)
    )


def _serve_retrieval(args: argparse.Namespace) -> int:
    from retrieval_service.server import serve

    asyncio.run(serve(settings_from_args(RetrievalSettings, args)))
    return 0


def _serve_inference(args: argparse.Namespace) -> int:
    from inference_service.server import serve

    asyncio.run(serve(settings_from_args(InferenceSettings, args)))
    return 0


def _up(args: argparse.Namespace) -> int:
    retrieval = load(RetrievalSettings, port=args.retrieval_port, home=args.home, store_url="")
    inference = load(InferenceSettings, port=args.inference_port)
    asyncio.run(_run_up(retrieval, inference))
    return 0


async def _run_up(retrieval: RetrievalSettings, inference: InferenceSettings) -> None:
    from raee.serving import tracing
    from raee.serving.metrics import serve_metrics_of
    from raee.serving.server import wait_for_shutdown_signal
    from raee_cli.pair import start_pair

    serve_metrics_of(retrieval, retrieval.metrics_port)
    tracing.setup("raee", load(TracingSettings))
    pair = await start_pair(retrieval, inference)
    print(
        f"raee up: inference worker on {pair.inference_address} (REST {pair.http_url or 'off'}), "
        f"retrieval service on "
        f"{pair.retrieval_address}, metrics on :{retrieval.metrics_port}; Ctrl-C stops",
        flush=True,
    )
    await wait_for_shutdown_signal()
    await pair.stop(inference.grace_s)


def _classify(args: argparse.Namespace) -> int:
    return asyncio.run(_run_classify(args))


async def _run_classify(args: argparse.Namespace) -> int:
    import dataclasses

    from raee_client import Client, ItemError, RaeeError, Result

    texts = list(args.texts)
    if args.file is not None:
        texts += _texts_of(args.file)
    if not texts:
        print("error: give TEXT arguments or --file", file=sys.stderr)
        return 2
    token = load(ClientSettings).client_token.get_secret_value()
    failed = False
    with Client(args.addr, token=token, tls_ca=args.tls_ca) as client:
        try:
            # One text: one Classify call; more: ClassifyBatch calls (classify_many chunks them).
            answers: list[Result | ItemError] = (
                [await asyncio.to_thread(client.classify, args.task, texts[0], args.mode, args.layer, args.k)]
                if len(texts) == 1
                else await asyncio.to_thread(
                    client.classify_many, args.task, texts, args.mode, args.layer, args.k
                )
            )
        except RaeeError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    for text, answer in zip(texts, answers, strict=True):
        if isinstance(answer, ItemError):
            print(f"error: text {answer.index + 1}: {answer.code}: {answer.message}", file=sys.stderr)
            failed = True
        elif args.json:
            print(json.dumps({"text": text, **dataclasses.asdict(answer)}))
        else:
            note = f"  DEGRADED ({answer.degraded_reason})" if answer.degraded else ""
            print(
                f"{answer.label}\texit {answer.exit_layer}/{answer.num_layers}\t"
                f"retrieval {answer.retrieval_ms:.1f} ms\tforward {answer.forward_ms:.1f} ms\t{text}{note}"
            )
    return 1 if failed else 0


def _texts_of(path: Path) -> list[str]:
    """The texts of a JSONL file: one JSON string, or an object with a "text" field, a line."""
    texts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise SystemExit(f"error: {path}:{number}: not JSON") from None
        text = row.get("text") if isinstance(row, dict) else row
        if not isinstance(text, str):
            raise SystemExit(f'error: {path}:{number}: expected a string or an object with a "text" string')
        texts.append(text)
    return texts


def _config(args: argparse.Namespace) -> int:
    from raee_cli.settings_reference import effective, write_reference

    if args.write_reference is not None:
        changed = write_reference(args.write_reference)
        print(f"{args.write_reference}: {'updated' if changed else 'already up to date'}")
        return 0
    print("\n".join(effective()))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from raee.backbone import Backbone
    from raee.encoder import QueryEncoder

    models = models_from_args(args)
    backbone = Backbone.load(models.backbone)
    encoder = QueryEncoder(models.encoder, runtime=models.encoder_runtime, spin="never")
    print(f"backbone {backbone.id} ready\nencoder {encoder.id} ready")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
