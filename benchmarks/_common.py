"""What the benchmark scripts share: reading the texts they time, and writing their report.

The scripts run standalone (``python benchmarks/<name>.py``), which puts this
folder on ``sys.path``; they import this module as ``_common``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from raee.data import Example, read_examples
from raee.tasks import TaskSpec


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
