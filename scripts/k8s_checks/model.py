"""The rendered objects as typed values: accessors, pod templates, environments, the problem list."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from .contract import COMMANDS, IMAGE_REPO, QDRANT_REPO, Command

Obj = dict[str, Any]

LONG_RUNNING_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
WORKLOAD_KINDS = LONG_RUNNING_KINDS | {"Job", "CronJob", "Pod"}


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
