"""Every third-party package the code imports is declared in pyproject.toml, and the eval specs ship."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN = {"raee", "raee_cli", "ingest", "retrieval_service", "inference_service", "evaluation"}
SHIPPED_BESIDE = {"raee_client"}  # clients/python, installed by the same distribution
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported(package: str) -> set[str]:
    modules: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        if "_pb2" in path.name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                modules.add(node.module.split(".")[0])
    return modules - OWN - SHIPPED_BESIDE - set(sys.stdlib_module_names) - {"__future__"}


@pytest.mark.parametrize(
    ("package", "extras"),
    # raee's tracing module imports OpenTelemetry only when the [otel] extra is installed.
    [("raee", ("otel",))]
    + [(p, ()) for p in sorted(OWN - {"raee", "evaluation"})]
    + [("evaluation", ("eval",))],
)
def test_imports_are_declared(package: str, extras: tuple[str, ...]) -> None:
    declared = {_name(r) for r in PROJECT["dependencies"]}
    for extra in extras:
        declared |= {_name(r) for r in PROJECT["optional-dependencies"][extra]}
    distributions = packages_distributions()
    missing = {
        module
        for module in _imported(package)
        if not {d.lower().replace("_", "-") for d in distributions.get(module, [module])} & declared
    }
    assert not missing, f"{package} imports {sorted(missing)}, which pyproject.toml does not declare"


def test_the_benchmark_specs_ship_inside_the_evaluation_package() -> None:
    """An installed `raee eval` finds them: package data, not a path into the repository."""
    from evaluation.runner import SPECS_DIR

    assert SPECS_DIR.is_relative_to(ROOT / "evaluation")
    assert len(list(SPECS_DIR.glob("*/*.yaml"))) == 12
    assert (
        "evaluation"
        in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    )
