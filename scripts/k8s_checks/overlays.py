"""Cluster-level rules of each overlay (environment): Qdrant's shape, shards, autoscaling, PDBs, API keys."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .contract import QDRANT_REPO
from .model import (
    LONG_RUNNING_KINDS,
    Context,
    Env,
    Index,
    PodTemplate,
    Problems,
    as_int,
    as_map,
    image_parts,
    labels_match,
    raee_command,
)
from .network import check_network_policies
from .qdrant import check_qdrant

# What each overlay must be (the dev/prod split); prefixes of the render name.
OVERLAY_EXPECTATIONS: dict[str, dict[str, Any]] = {
    "overlays/dev": {"qdrant_nodes": 1, "service_replicas": 1, "autoscaled": False},
    "overlays/prod": {"qdrant_nodes": 3, "min_shards": 2, "min_replication": 2, "autoscaled": True},
}


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
