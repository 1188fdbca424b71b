"""Objects among themselves: selectors, Services, StatefulSets, PDBs and HPAs, namespaces, references."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model import (
    LONG_RUNNING_KINDS,
    Context,
    PodTemplate,
    Problems,
    as_int,
    as_list,
    as_map,
    ident,
    labels_match,
    namespace_of,
    plain_selector_matches,
    pod_templates,
)


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
