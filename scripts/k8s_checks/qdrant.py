"""Qdrant's StatefulSet against its own config file."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import yaml

from .model import Context, Env, Obj, PodTemplate, Problems, as_int, as_list, as_map

QDRANT_ENV = re.compile(r"^(QDRANT__[A-Z0-9_]+|QDRANT_INIT_FILE_PATH|QDRANT_ALLOW_RECOVERY_MODE)$")


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
