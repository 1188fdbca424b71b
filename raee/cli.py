"""The ``raee`` command line: ingest tasks, list them, run the demo."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path

from raee.data import DataError, read_examples
from raee.model_loading import DEFAULT_BACKBONE
from raee.tasks import TaskSpec, TaskSpecError

DEMO_DIR = Path(str(files("raee") / "demo"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("RAEE_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except (TaskSpecError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raee", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    ingest = commands.add_parser("ingest", help="probe the backbone over labelled data and publish a task")
    _add_spec_flags(ingest)
    ingest.add_argument("--data", required=True, type=Path, help="JSONL, CSV or TSV with text and label")
    _add_store_flags(ingest)
    _add_model_flags(ingest)
    ingest.add_argument("--batch-size", type=int, default=16, help="examples per forward pass (16)")
    ingest.add_argument("--skip-invalid", action="store_true", help="ingest valid rows, skip the rest")
    ingest.add_argument("--no-progress", action="store_true", help="no progress bar")
    ingest.set_defaults(handler=_ingest)

    tasks = commands.add_parser("tasks", help="list published tasks")
    _add_store_flags(tasks)
    tasks.add_argument("--json", action="store_true", help="machine-readable output")
    tasks.set_defaults(handler=_tasks)

    demo = commands.add_parser("demo", help="the main job on the embedded store: ingest the demo task")
    _add_store_flags(demo)
    _add_model_flags(demo)
    demo.set_defaults(handler=_demo)
    return parser


def _add_spec_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("task spec (a file, or flags)")
    group.add_argument("--task-spec", type=Path, help="YAML or JSON task spec")
    group.add_argument("--task", help="task name (with --template and --label)")
    group.add_argument("--template", help="prompt template with a {text} slot")
    group.add_argument("--label", action="append", default=[], help="NAME=WORD, in label order")
    group.add_argument("--metric", default="accuracy", choices=["accuracy", "matthews_corrcoef"])


def _add_store_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("exit store (embedded by default)")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--store-url", help="Qdrant URL (or $RAEE_QDRANT_URL); local:PATH for local mode")
    where.add_argument("--home", type=Path, help="data folder of the embedded store ($RAEE_HOME, ./.raee)")


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument(
        "--backbone",
        default=os.environ.get("RAEE_BACKBONE", DEFAULT_BACKBONE),
        help="gemma-3-270m (default), a .gguf file, a folder or a hub id",
    )
    group.add_argument(
        "--encoder",
        default=os.environ.get("RAEE_ENCODER", "all-MiniLM-L6-v2"),
        help="sentence-transformers model (default all-MiniLM-L6-v2, shipped on PyPI)",
    )


def _spec_from_args(args: argparse.Namespace) -> TaskSpec:
    if args.task_spec is not None:
        if args.task or args.template or args.label:
            raise TaskSpecError("give either --task-spec or --task/--template/--label, not both")
        return TaskSpec.from_file(args.task_spec)
    if not (args.task and args.template and args.label):
        raise TaskSpecError("give --task-spec FILE, or all of --task, --template and --label")
    return TaskSpec.from_flags(args.task, args.template, args.label, args.metric)


def _ingest(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    return _run_ingest(spec, args.data, args, skip_invalid=args.skip_invalid, progress=not args.no_progress)


def _run_ingest(
    spec: TaskSpec, data: Path, args: argparse.Namespace, *, skip_invalid: bool, progress: bool
) -> int:
    examples, errors = read_examples(data, spec)
    if errors and (not skip_invalid or not examples):
        raise DataError(errors)
    for error in errors:
        logging.getLogger("raee.ingest").warning("skipped %s", error)

    from ingest import render_summary, run_ingest
    from raee.backbone import Backbone
    from raee.encoder import QueryEncoder
    from raee.store import open_store

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
            batch_size=getattr(args, "batch_size", 16),
            skipped=len(errors),
            progress=progress,
            extra_stats={"data_file": str(data)},
        )
    finally:
        store.close()
    print(render_summary(result))
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
    spec = TaskSpec.from_file(DEMO_DIR / "task.yaml")
    return _run_ingest(spec, DEMO_DIR / "train.jsonl", args, skip_invalid=False, progress=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
