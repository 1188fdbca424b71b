"""The Dockerfile's COPY sources and what .dockerignore admits into the build context agree.

Both lists come from parsing the two files: a COPY of something the context
leaves out fails the build (the bug of issue 10), and anything admitted but
never copied is dead weight in every build. A package that pyproject installs
must be copied too, unless it is one the serving image leaves out on purpose.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import tomllib
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[1]
# Installed by `pip install .` from a checkout, never shipped in the serving image.
NOT_SHIPPED = {"evaluation"}
SKIP_DIRS = {".git", ".venv", "node_modules"}


def dockerfile_copy_sources(text: str) -> set[str]:
    """The build-context paths of every ``COPY``/``ADD`` that does not copy from a stage."""
    sources: set[str] = set()
    logical = text.replace("\\\n", " ")
    for line in logical.splitlines():
        words = shlex.split(line, comments=True) if line.strip() else []
        if not words or words[0].upper() not in {"COPY", "ADD"}:
            continue
        args = words[1:]
        if any(arg.startswith("--from=") for arg in args):
            continue
        paths = [arg for arg in args if not arg.startswith("--")]
        sources.update(str(PurePosixPath(path)) for path in paths[:-1])
    return sources


def dockerignore_rules(text: str) -> list[tuple[bool, str]]:
    """(admit, pattern) in file order; the last rule that matches a path decides (Docker's semantics)."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        admit = line.startswith("!")
        pattern = line.lstrip("!").strip().rstrip("/")
        rules.append((admit, str(PurePosixPath(pattern))))
    return rules


def _matches(pattern: str, path: str) -> bool:
    """A pattern matches a path or any folder above it; ``**/`` matches any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts)
    return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes)


def admitted(rules: list[tuple[bool, str]], path: str) -> bool:
    verdict = True
    for admit, pattern in rules:
        if _matches(pattern, path):
            verdict = admit
    return verdict


def repository_files() -> list[str]:
    files = []
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [name for name in dirs if name not in SKIP_DIRS]
        for name in names:
            files.append(Path(folder, name).relative_to(ROOT).as_posix())
    return files


def context_files() -> list[str]:
    rules = dockerignore_rules((ROOT / ".dockerignore").read_text())
    return [path for path in repository_files() if admitted(rules, path)]


def _under(path: str, source: str) -> bool:
    return path == source or path.startswith(source + "/")


def test_every_copy_source_is_in_the_context() -> None:
    sources = dockerfile_copy_sources((ROOT / "Dockerfile").read_text())
    context = context_files()
    missing = sorted(source for source in sources if not any(_under(path, source) for path in context))
    assert not missing, f"Dockerfile copies {missing}, which .dockerignore leaves out of the context"


def test_everything_in_the_context_is_copied() -> None:
    sources = dockerfile_copy_sources((ROOT / "Dockerfile").read_text())
    unused = sorted(
        {path.split("/")[0] for path in context_files() if not any(_under(path, s) for s in sources)}
    )
    assert not unused, f".dockerignore admits {unused}, which the Dockerfile never copies"


def test_every_serving_package_is_copied() -> None:
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"][
        "include"
    ]
    packages = {
        child.name
        for child in ROOT.iterdir()
        if (child / "__init__.py").is_file() and any(fnmatch.fnmatchcase(child.name, p) for p in include)
    }
    sources = dockerfile_copy_sources((ROOT / "Dockerfile").read_text())
    not_copied = sorted(packages - NOT_SHIPPED - sources)
    assert not not_copied, (
        f"pyproject installs {not_copied} but the image does not ship them: add `COPY <name> ./<name>` "
        "to the Dockerfile's sources and `!<name>/` to .dockerignore"
    )
    assert not (sources & NOT_SHIPPED), f"the serving image must not ship {sorted(sources & NOT_SHIPPED)}"


def test_the_parsers_read_what_docker_reads() -> None:
    """The parsers themselves, on a small Dockerfile and .dockerignore."""
    dockerfile = (
        "FROM x AS build\nCOPY --chown=1:1 a b/ /dst/\nCOPY --from=build /opt /opt\n"
        "ADD c /c\nRUN echo COPY d /d \\\n  && true\n"
    )
    assert dockerfile_copy_sources(dockerfile) == {"a", "b", "c"}
    rules = dockerignore_rules("*\n!keep/\n**/__pycache__\n!w/*.whl\n")
    assert admitted(rules, "keep/x.py")
    assert not admitted(rules, "keep/__pycache__/x.pyc")
    assert not admitted(rules, "other/x.py")
    assert admitted(rules, "w/t.whl")
    assert not admitted(rules, "w/t.txt")
