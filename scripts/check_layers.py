"""Check the package layering from the source's imports (static: every ``import`` statement counts).

python scripts/check_layers.py [--root DIR]

Rules, each printed as a violation with the file and line:
1. A package imports only packages of its own layer or below (LAYERS, bottom first),
   and the packages of one layer do not import each other (the two services and
   ingest are independent of one another).
2. No two packages import each other, directly or through others (a cycle), counting
   the core's subpackages (``raee.store``, ``raee.wire``, ...) as packages of their own.
3. Only ``raee/settings.py`` reads the environment (``os.environ``, ``os.getenv``, under
   any name ``os`` is imported as). The one other module that touches it,
   ``raee/__init__.py``, gives libgomp its default before torch loads (see there).
"""

from __future__ import annotations

import argparse
import ast
import graphlib
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

LAYERS: tuple[tuple[str, ...], ...] = (
    ("raee",),
    ("ingest", "retrieval_service", "inference_service"),
    ("raee_cli",),
    ("evaluation",),
)
SETTINGS_MODULE = "raee/settings.py"
# Sets GOMP_SPINCOUNT when unset: libgomp reads it once, when torch loads, before any settings exist.
PROCESS_DEFAULTS_MODULE = "raee/__init__.py"
ENVIRONMENT_READS = {"environ", "getenv", "environb", "getenvb"}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    root = parser.parse_args().root
    problems = check(root)
    for problem in problems:
        print(problem)
    print(f"layers: {len(problems)} problem(s)" if problems else "layers: ok")
    return 1 if problems else 0


def check(root: Path) -> list[str]:
    layer_of = {package: index for index, names in enumerate(LAYERS) for package in names}
    edges: dict[str, set[str]] = defaultdict(set)
    problems: list[str] = []
    for path in _sources(root, layer_of):
        relative = path.relative_to(root).as_posix()
        importer = _package_of(root, relative.removesuffix(".py").replace("/", "."))
        tree = ast.parse(path.read_text(), filename=relative)
        for line, imported in _imports(tree, relative):
            target = _package_of(root, imported)
            top, target_top = importer.split(".")[0], target.split(".")[0]
            if target_top not in layer_of:
                continue
            if target != importer:
                edges[importer].add(target)
            if top != target_top and layer_of[target_top] >= layer_of[top]:
                problems.append(f"{relative}:{line}: {top} (layer {layer_of[top]}) imports {imported}")
        if relative not in {SETTINGS_MODULE, PROCESS_DEFAULTS_MODULE}:
            problems += [f"{relative}:{line}: reads the environment" for line in _environment_reads(tree)]
    problems += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(edges)]
    return problems


def _sources(root: Path, packages: dict[str, int]) -> Iterator[Path]:
    for package in sorted(packages):
        folder = root / package
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*.py") if "_pb2" not in p.name)


def _package_of(root: Path, module: str) -> str:
    """``raee.store.edge`` -> ``raee.store``; ``raee.settings`` -> ``raee`` (a module, not a folder)."""
    parts = module.split(".")
    if parts[0] == "raee" and len(parts) > 1 and (root / "raee" / parts[1]).is_dir():
        return f"raee.{parts[1]}"
    return parts[0]


def _imports(tree: ast.AST, relative: str) -> Iterator[tuple[int, str]]:
    package = relative.rsplit("/", 1)[0].replace("/", ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            # ``from raee import settings`` imports the module raee.settings
            for alias in node.names:
                yield node.lineno, f"{module}.{alias.name}" if module in {"raee"} else module


def _environment_reads(tree: ast.AST) -> Iterator[int]:
    os_names = {"os"} | {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "os" and alias.asname
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENVIRONMENT_READS:
            if isinstance(node.value, ast.Name) and node.value.id in os_names:
                yield node.lineno
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENVIRONMENT_READS for alias in node.names)
        ):
            yield node.lineno


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """A cycle among the packages, if there is one (graphlib names one at a time)."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as error:
        return [list(reversed(error.args[1]))]
    return []


if __name__ == "__main__":
    sys.exit(main())
