"""Run a container of a rendered Kubernetes manifest with podman or docker, as the kubelet would.

From the pod spec it takes the command and args, the environment (literal
values, ConfigMap keys from the same rendering, CPU limits; Secret keys are left
out), the user and group, a read-only root filesystem, dropped capabilities,
no privilege escalation, the memory limit, and the volume mounts: an
``emptyDir`` becomes a tmpfs unless the caller maps it to a host folder (to share
it between containers, as an init container shares it with the main one), any
other volume must be mapped. What differs from the manifest is passed as
``env`` overrides and ``extra_mounts``, so the differences are visible where the
container is started.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Manifest = dict[str, Any]
MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}


class ManifestError(ValueError):
    """The manifests do not hold what a container needs."""


def render(kustomization: Path) -> list[Manifest]:
    """``kubectl kustomize`` of a folder, as a list of objects."""
    kubectl = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def pod_spec(docs: Sequence[Manifest], kind: str, name: str) -> Manifest:
    """The pod template spec of a Deployment, Job or CronJob."""
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            spec: Manifest = doc["spec"]
            if kind == "CronJob":
                spec = spec["jobTemplate"]["spec"]
            return dict(spec["template"]["spec"])
    raise ManifestError(f"manifests: no {kind} {name}")


def container(spec: Manifest, name: str) -> Manifest:
    for item in [*spec.get("initContainers", []), *spec["containers"]]:
        if item["name"] == name:
            return dict(item)
    raise ManifestError(f"manifests: no container {name}")


def config_maps(docs: Sequence[Manifest]) -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: dict(doc.get("data", {})) for doc in docs if doc["kind"] == "ConfigMap"}


def _cpu_limit(value: str) -> str:
    """``resourceFieldRef: limits.cpu`` rounds up to whole cores, as the kubelet does."""
    cores = float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    return str(max(1, math.ceil(cores)))


def _memory_bytes(value: str) -> int:
    match = re.fullmatch(r"(\d+)([KMGT]i?)?", value)
    if not match:
        raise ManifestError(f"resources: memory {value!r} not understood")
    return int(match.group(1)) * MEMORY_UNITS.get(match.group(2) or "", 1)


def environment(
    item: Manifest, maps: Mapping[str, Mapping[str, str]], overrides: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment as the kubelet sets it, then ``overrides`` on top (Secrets left out)."""
    env: dict[str, str] = {}
    limits = item.get("resources", {}).get("limits", {})
    for var in item.get("env", []):
        name = var["name"]
        if name in overrides:
            continue
        if "value" in var:
            env[name] = str(var["value"])
            continue
        source = var.get("valueFrom", {})
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            try:
                env[name] = maps[ref["name"]][ref["key"]]
            except KeyError:
                raise ManifestError(
                    f"env {name}: ConfigMap {ref['name']} key {ref['key']} not rendered"
                ) from None
        elif "resourceFieldRef" in source and source["resourceFieldRef"]["resource"] == "limits.cpu":
            env[name] = _cpu_limit(str(limits.get("cpu", os.cpu_count() or 1)))
        elif "secretKeyRef" in source:
            continue  # no Secrets here; a test that needs one passes an override
        else:
            raise ManifestError(f"env {name}: valueFrom {sorted(source)} not supported")
    env.update(overrides)
    return env


@dataclass
class RunSpec:
    """How to start one container of a pod spec."""

    spec: Manifest
    container: str
    name: str
    image: str
    maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    volumes: Mapping[str, Path] = field(default_factory=dict)  # pod volume name -> host folder
    extra_mounts: Mapping[str, Path] = field(default_factory=dict)  # container path -> host folder
    network: str = ""
    aliases: Sequence[str] = ()
    publish: Mapping[int, int] = field(default_factory=dict)  # container port -> host port on 127.0.0.1
    cpu_cap: int | None = None  # OMP_NUM_THREADS no higher than the cores this machine has

    def command(self, engine: str) -> list[str]:
        item = container(self.spec, self.container)
        security = {**self.spec.get("securityContext", {}), **item.get("securityContext", {})}
        args = [engine, "run", "--detach", "--name", self.name]
        uid = security.get("runAsUser")
        if uid is not None:
            args += ["--user", f"{uid}:{security.get('runAsGroup', uid)}"]
        if security.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        for cap in security.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        if security.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        memory = item.get("resources", {}).get("limits", {}).get("memory")
        if memory:
            args += ["--memory", str(_memory_bytes(str(memory)))]
        env = environment(item, self.maps, self.env)
        if self.cpu_cap and "OMP_NUM_THREADS" in env:
            env["OMP_NUM_THREADS"] = str(min(int(env["OMP_NUM_THREADS"]), self.cpu_cap))
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        args += self._mounts(item, env)
        if self.network:
            args += ["--network", self.network]
            for alias in self.aliases:
                args += ["--network-alias", alias]
        for inner, outer in self.publish.items():
            args += ["--publish", f"127.0.0.1:{outer}:{inner}"]
        command = item.get("command", [])
        if command:
            args += ["--entrypoint", command[0]]
        return [*args, self.image, *command[1:], *item.get("args", [])]

    def _mounts(self, item: Manifest, env: Mapping[str, str]) -> list[str]:
        volumes = {volume["name"]: volume for volume in self.spec.get("volumes", [])}
        args: list[str] = []
        for mount in item.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            target = mount["mountPath"]
            host = self.volumes.get(mount["name"])
            if host is None:
                if "emptyDir" not in volume:
                    raise ManifestError(f"volume {mount['name']}: map it to a host folder")
                size = volume["emptyDir"].get("sizeLimit")
                options = "rw,mode=1777" + (f",size={_memory_bytes(str(size))}" if size else "")
                args += ["--tmpfs", f"{target}:{options}"]
                continue
            sub = mount.get("subPath") or re.sub(
                r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""), mount.get("subPathExpr", "")
            )
            source = host / sub if sub else host
            flags = "ro" if mount.get("readOnly") else "rw"
            args += ["--volume", f"{source}:{target}:{flags}"]
        for target, host in self.extra_mounts.items():
            args += ["--volume", f"{host}:{target}:rw"]
        return args
