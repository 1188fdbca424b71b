"""The demo the project ships: a small sentiment task written for it (task.yaml, train/test.jsonl).

``raee_cli.demo.run`` ingests it, serves it and classifies over gRPC (``raee demo``).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from raee.tasks import TaskSpec

DEMO_DIR = Path(str(files("raee_cli") / "demo"))


def demo_spec() -> TaskSpec:
    return TaskSpec.from_file(DEMO_DIR / "task.yaml")
