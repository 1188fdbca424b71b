"""What the benchmark scripts share: their common flags, the texts they time, their report.

The scripts run standalone (``python benchmarks/<name>.py``), which puts this
folder on ``sys.path``; they import this module as ``_common``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raee.data import Example, read_examples
from raee.tasks import TaskSpec

if TYPE_CHECKING:
    from raee.encoder import QueryEncoder


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
    other._run_onnx = functools.partial(encoder_onnx.run, encoder_onnx.session(graph))
    return other
