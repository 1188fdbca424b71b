"""NetworkPolicies: ingress only clients -> inference -> retrieval -> Qdrant, and ingest Jobs -> Qdrant."""

from __future__ import annotations

from collections.abc import Mapping

from .model import Context, Obj, PodTemplate, Problems, as_list, as_map, ident, labels_match, namespace_of

CLIENT_LABEL = "raee-serve/client"

# Who may open connections to which named port, by pod role (NetworkPolicy check).
ALLOWED_INGRESS: dict[tuple[str, str], frozenset[str]] = {
    ("qdrant", "http"): frozenset({"retrieval", "ingest", "qdrant"}),
    ("qdrant", "grpc"): frozenset({"retrieval", "ingest", "qdrant"}),
    ("qdrant", "p2p"): frozenset({"qdrant"}),
    ("retrieval", "grpc"): frozenset({"inference"}),
}


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
