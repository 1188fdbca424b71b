"""``raee eval``: a subcommand this package adds to the ``raee`` CLI (entry point ``raee.commands``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from evaluation import BENCHMARK_TASKS, FAMILIES
from raee_cli.flags import add_model_flags, add_store_flags, models_from_args, store_from_args


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    evaluate = commands.add_parser("eval", help="RAEE against its baselines on benchmark tasks, via gRPC")
    evaluate.add_argument(
        "--data-root",
        type=Path,
        default=Path("benchmarks/data"),
        help="<task>/{train,test}.jsonl (benchmarks/data: the copy this repository ships)",
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
    evaluate.add_argument(
        "--retrieval-process",
        action="store_true",
        help="run the retrieval service as its own process, as deployed (default: both in this one)",
    )
    evaluate.add_argument("--out", type=Path, default=Path("docs/results"))
    add_store_flags(evaluate, url=False)
    add_model_flags(evaluate)
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from evaluation.report import markdown
    from evaluation.runner import benchmark_tasks, folder_task, run_eval

    task_names = args.task or list(BENCHMARK_TASKS)
    names = [] if task_names == ["none"] else task_names
    tasks = benchmark_tasks(args.data_root, args.family or list(FAMILIES), names)
    tasks += [folder_task(folder) for folder in args.task_dir]
    if not tasks:
        raise ValueError("task: nothing to evaluate")
    models = models_from_args(args)
    summary = asyncio.run(
        run_eval(
            tasks,
            home=store_from_args(args).home,
            out=args.out,
            command="raee " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["eval"] else "raee eval",
            backbone_source=models.backbone,
            encoder_source=models.encoder,
            train_limit=args.train_limit,
            tau_sample=args.tau_sample,
            latency_sample=args.latency_sample,
            retrieval_process=args.retrieval_process,
        )
    )
    print(markdown(summary))
    print(f"written to {args.out}/")
    return 0
