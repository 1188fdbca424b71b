"""scripts/check_layers.py: the repository's layering holds, and each rule catches a breach."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", ROOT / "scripts" / "check_layers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repository_is_layered(layers: ModuleType) -> None:
    assert layers.check(ROOT) == []


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "raee/__init__.py": "",
    "raee/settings.py": "import os\nHOME = os.environ.get('RAEE_HOME')\n",
    "raee/store/__init__.py": "from raee import settings\n",
    "ingest/__init__.py": "from raee.store import x\n",
    "retrieval_service/__init__.py": "import raee.settings\n",
    "raee_cli/__init__.py": "from ingest import y\nfrom retrieval_service import z\n",
    "evaluation/__init__.py": "from raee_cli import w\n",
}


def test_a_clean_tree_passes(layers: ModuleType, tmp_path: Path) -> None:
    assert layers.check(_tree(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("raee/tasks.py", "from raee_cli import main\n", "raee/tasks.py:1: raee (layer 0) imports raee_cli"),
        (
            "raee/cli.py",
            "import evaluation.runner\n",
            "raee/cli.py:1: raee (layer 0) imports evaluation.runner",
        ),
        (
            "ingest/job.py",
            "from retrieval_service import engine\n",
            "ingest (layer 1) imports retrieval_service",
        ),
        ("raee_cli/main.py", "from evaluation import report\n", "raee_cli (layer 2) imports evaluation"),
        ("raee/paths.py", "import os\nP = os.environ['X']\n", "raee/paths.py:2: reads the environment"),
        ("ingest/io.py", "from os import getenv\n", "ingest/io.py:1: reads the environment"),
        (
            "ingest/env.py",
            "import os as _os\nX = _os.environ.get('X')\n",
            "ingest/env.py:2: reads the environment",
        ),
        (
            "raee/settings.py",
            "from raee.store import open_store\n",
            "import cycle: raee.store -> raee -> raee.store",
        ),
    ],
)
def test_each_breach_is_named(
    layers: ModuleType, tmp_path: Path, name: str, text: str, expected: str
) -> None:
    root = _tree(tmp_path, CLEAN)
    path = root / name
    path.write_text((path.read_text() if path.exists() else "") + text)
    problems = layers.check(root)
    assert any(expected in problem for problem in problems), problems
