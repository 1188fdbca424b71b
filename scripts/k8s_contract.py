"""What only this project knows about its manifests: the contract between k8s/ and the code.

* the ``raee`` containers run a ``raee`` command with only the ``RAEE_*`` keys it reads
  (:func:`known_env_keys`), secrets from Secrets, the image's tag and user;
* the services listen, and are probed, on their ports, under the name their server registers,
  with time to load a model and to shut down;
* peer addresses lead through a Service to the peer's port, and NetworkPolicies let them in;
* the ingest flow: task specs from ConfigMaps, sharded Indexed Jobs and their publish Jobs;
* Qdrant: ports as its config says, distributed exactly with several nodes, bootstrapping
  from node 0; shards and replication that fit the nodes; one API key.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

Obj = dict[str, Any]
IMAGE_REPO, QDRANT_REPO = "ghcr.io/raee-serve/raee", "qdrant/qdrant"
BAKED_SUFFIX = "-baked"  # the image with the converted weights inside (components/baked-weights)
MIN_STARTUP_S = 120  # a service loads its model before it reports SERVING
DEFAULT_TERMINATION_S = 30  # Kubernetes' terminationGracePeriodSeconds when unset
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod")
# Env keys holding a peer's address: pattern, shape for messages, the peer's role and port name.
ADDRESSES = {
    "RAEE_QDRANT_URL": (r"https?://([A-Za-z0-9.-]+):(\d+)/?", "http(s)://host:port", "qdrant", "http"),
    "RAEE_RETRIEVAL_ADDR": (r"([A-Za-z0-9.-]+):(\d+)", "host:port", "retrieval", "grpc"),
}


@dataclass(frozen=True)
class Key:
    default: object = None
    secret: bool = False


@functools.cache
def known_env_keys() -> dict[str, dict[str, Key]]:
    """``{raee command: {RAEE_* key it reads: its default, whether it is a secret}}``.

    Derived from the settings models each command loads (raee/settings.py), so the
    manifests are checked against the code's own list of variables.
    """
    from raee import settings

    def keys(*kinds: type[settings.RaeeSettings]) -> dict[str, Key]:
        return {
            settings.env_name(field): Key(field.default, secret=settings.is_secret(field))
            for kind in kinds
            for field in kind.model_fields.values()
        }

    common = keys(settings.LogSettings, settings.PathSettings)
    return {
        "serve retrieval": common | keys(settings.RetrievalSettings),
        "serve inference": common | keys(settings.InferenceSettings),
        "prepare": common | keys(settings.ModelSettings),
        "ingest": common | keys(settings.StoreSettings, settings.ModelSettings),
        "publish": common | keys(settings.StoreSettings),
    }


@functools.cache
def services() -> dict[str, tuple[str, str, str]]:
    """``{serve command: (its gRPC port key, its metrics port key, the name its health reports)}``."""
    from raee.v1 import inference_pb2 as inference
    from raee.v1 import retrieval_pb2 as retrieval

    return {
        f"serve {role}": (f"RAEE_{role.upper()}_PORT", f"RAEE_{role.upper()}_METRICS_PORT", service.full_name)
        for role, service in (
            ("retrieval", retrieval.DESCRIPTOR.services_by_name["RetrievalService"]),
            ("inference", inference.DESCRIPTOR.services_by_name["InferenceService"]),
        )
    }


# --------------------------------------------------------------------------- reading objects


def m(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def ls(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def num(value: object) -> int | None:
    return int(value) if isinstance(value, int | str) and re.fullmatch(r"\d+", str(value)) else None


def ident(obj: Obj) -> str:
    return f"{obj.get('kind', '?')}/{m(obj.get('metadata')).get('name', '?')}"


def namespace(obj: Obj) -> str:
    return str(m(obj.get("metadata")).get("namespace") or "default")


def labels_match(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in m(selector.get("matchLabels")).items()):
        return False
    for expr in map(m, ls(selector.get("matchExpressions"))):
        key, op, values = str(expr.get("key")), expr.get("operator"), [str(v) for v in ls(expr.get("values"))]
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists") != (key in labels) and op in ("Exists", "DoesNotExist"):
            return False
    return True


@dataclass(eq=False)
class Pod:
    """A pod template and the object that owns it."""

    render: str
    owner: Obj
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: Obj

    @property
    def where(self) -> str:
        return f"{self.render}: {ident(self.owner)}"

    @property
    def namespace(self) -> str:
        return namespace(self.owner)

    @property
    def job(self) -> Obj:
        """The Job spec (of a Job, or a CronJob's template)."""
        spec = m(self.owner.get("spec"))
        return m(m(spec.get("jobTemplate")).get("spec")) if self.owner.get("kind") == "CronJob" else spec

    def containers(self, *, init: bool = True) -> list[Obj]:
        return [m(c) for c in ls(self.spec.get("initContainers")) if init] + [
            m(c) for c in ls(self.spec.get("containers"))
        ]

    def ports(self) -> dict[str, int]:
        return {
            str(p.get("name", p.get("containerPort"))): int(p["containerPort"])
            for c in self.containers(init=False)
            for p in map(m, ls(c.get("ports")))
            if num(p.get("containerPort")) is not None
        }

    def port(self, ref: object) -> int | None:
        """A named or numbered port of this pod; None if it has no such port."""
        return num(ref) if num(ref) in self.ports().values() else self.ports().get(str(ref))

    def role(self) -> str:
        commands = [command_of(c) for c in self.containers(init=False)]
        if "serve retrieval" in commands or "serve inference" in commands:
            return "retrieval" if "serve retrieval" in commands else "inference"
        if any(image_of(c)[0] == QDRANT_REPO for c in self.containers()):
            return "qdrant"
        return "ingest" if {"ingest", "publish"} & set(commands) else "other"


def pods_of(render: str, obj: Obj) -> list[Pod]:
    if obj.get("kind") not in WORKLOADS:
        return []
    spec = m(obj.get("spec"))
    if obj.get("kind") == "CronJob":
        spec = m(m(spec.get("jobTemplate")).get("spec"))
    template = obj if obj.get("kind") == "Pod" else m(spec.get("template"))
    meta, pod_spec = m(template.get("metadata")), m(template.get("spec"))
    return [Pod(render, obj, m(meta.get("labels")), m(meta.get("annotations")), pod_spec)]


def image_of(container: Obj) -> tuple[str, str]:
    """An image's repository and tag."""
    repo, _, tag = str(container.get("image", "")).rpartition(":")
    return repo, tag


def command_of(container: Obj) -> str | None:
    """The ``raee`` command a container of the image runs (None: another image, or no command)."""
    if image_of(container)[0] != IMAGE_REPO:
        return None
    args = [str(a) for a in ls(container.get("args"))]
    return next((c for c in known_env_keys() if args[: len(c.split())] == c.split()), None)


class World:
    """One environment: an overlay's objects and the ingest folders applied next to it."""

    def __init__(self, renders: Mapping[str, list[Obj]]) -> None:
        self.objects = {
            (str(o.get("kind")), namespace(o), ident(o).split("/", 1)[1]): o
            for r in renders.values()
            for o in r
        }
        self.pods = [p for name, objects in renders.items() for o in objects for p in pods_of(name, o)]

    def get(self, kind: str, ns: str, name: str) -> Obj | None:
        return self.objects.get((kind, ns, name))

    def config_file(self, pod: Pod, mount: Obj, key: str) -> tuple[str | None, str | None]:
        """The ConfigMap behind a volumeMount of ``pod``, and the text of its ``key``."""
        volume = next(
            (m(v) for v in ls(pod.spec.get("volumes")) if m(v).get("name") == mount.get("name")), {}
        )
        name = m(volume.get("configMap")).get("name")
        text = m(m(self.get("ConfigMap", pod.namespace, str(name))).get("data")).get(key)
        return name, None if text is None else str(text)

    def env(self, pod: Pod, container: Obj) -> dict[str, str]:
        """Literal and ConfigMap values of a container's environment."""
        values = {}
        for entry in map(m, ls(container.get("env"))):
            ref = m(m(entry.get("valueFrom")).get("configMapKeyRef"))
            data = m(m(self.get("ConfigMap", pod.namespace, str(ref.get("name")))).get("data"))
            value = entry.get("value", data.get(str(ref.get("key"))))
            if value is not None:
                values[str(entry.get("name"))] = str(value)
        return values


def flag(args: list[str], name: str, env: Mapping[str, str]) -> str | None:
    """The value of option ``name``, its ``$(VAR)`` expanded as the kubelet does."""
    value = args[args.index(name) + 1] if name in args[:-1] else None
    return None if value is None else re.sub(r"\$\((\w+)\)", lambda g: env.get(g.group(1), g.group(0)), value)


def secret_ref(container: Obj, key: str) -> tuple[str, str] | None:
    for entry in map(m, ls(container.get("env"))):
        ref = m(m(entry.get("valueFrom")).get("secretKeyRef"))
        if entry.get("name") == key and ref:
            return str(ref.get("name")), str(ref.get("key"))
    return None


# --------------------------------------------------------------------------- the checks


def contract_problems(renders: Mapping[str, list[Obj]], repo_root: Path) -> list[str]:
    """Every overlay, with the ingest folders applied next to it, against the contract."""
    problems: dict[str, None] = {}  # ordered, without repeats
    overlays = [name for name in renders if name.startswith("overlays/")]
    ingest = {name: objects for name, objects in renders.items() if name not in overlays}
    image = image_facts(repo_root)
    for overlay in overlays:
        world = World({overlay: renders[overlay], **ingest})
        for pod in world.pods:
            problems |= dict.fromkeys(f"{pod.where}{p}" for p in pod_problems(world, pod, image))
        problems |= dict.fromkeys(qdrant_problems(world, overlay))
        problems |= dict.fromkeys(ingest_flow_problems(world))
    return list(problems)


def image_facts(repo_root: Path) -> tuple[str | None, int | None]:
    """The project's version (the image tag) and the uid of the Dockerfile's final USER."""
    pyproject, dockerfile = repo_root / "pyproject.toml", repo_root / "Dockerfile"
    version = tomllib.loads(pyproject.read_text())["project"]["version"] if pyproject.is_file() else None
    users = re.findall(r"^USER\s+(\d+)", dockerfile.read_text(), re.M) if dockerfile.is_file() else []
    return version, int(users[-1]) if users else None


def pod_problems(world: World, pod: Pod, image: tuple[str | None, int | None]) -> Iterator[str]:
    selector = m(pod.owner.get("spec")).get("selector")
    if pod.owner.get("kind") != "CronJob" and selector and not labels_match(m(selector), pod.labels):
        # The API server refuses this; no schema says so.
        yield f": spec.selector {selector} does not match its pod labels {pod.labels}"
    for container in (c for c in pod.containers() if image_of(c)[0] == IMAGE_REPO):
        where, command = f" container {container.get('name')}: ", command_of(container)
        if command is None:
            known = ", ".join(f"raee {c}" for c in known_env_keys())
            yield f"{where}args {container.get('args')} are not a raee command ({known})"
            continue
        keys = known_env_keys()[command]
        for name in (str(m(e).get("name")) for e in ls(container.get("env"))):
            if name.startswith("RAEE_") and name not in keys:
                yield f"{where}unknown env key {name} for raee {command} (not a key it reads)"
            elif name in keys and keys[name].secret and secret_ref(container, name) is None:
                yield f"{where}env {name} is a secret: take it from a Secret (valueFrom.secretKeyRef)"
        (version, uid), tag = image, image_of(container)[1]
        if version and tag.removesuffix(BAKED_SUFFIX) != version:
            yield f"{where}image tag {tag} is not the project's version {version} (pyproject.toml)"
        pod_uid = m(pod.spec.get("securityContext")).get("runAsUser")
        run_as = m(container.get("securityContext")).get("runAsUser", pod_uid)
        if uid is not None and run_as != uid:
            yield f"{where}runAsUser is {run_as}, the image's user is {uid} (Dockerfile USER)"
        env = world.env(pod, container)
        if command in services() and container in pod.containers(init=False):
            yield from (where + p for p in service_problems(pod, container, command, env, keys))
        yield from (where + p for p in address_problems(world, pod, env))


def service_problems(
    pod: Pod, container: Obj, command: str, env: dict[str, str], keys: dict[str, Key]
) -> Iterator[str]:
    grpc_key, metrics_key, health = services()[command]
    grpc, metrics = (num(env.get(k, keys[k].default)) for k in (grpc_key, metrics_key))
    ports = {str(p.get("name")): num(p.get("containerPort")) for p in map(m, ls(container.get("ports")))}
    for name, key, value in (("grpc", grpc_key, grpc), ("metrics", metrics_key, metrics)):
        if ports.get(name) != value:
            yield f"containerPort {name} is {ports.get(name)}, but raee {command} listens on {value} ({key})"
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = m(m(container.get(probe_name)).get("grpc"))
        if not probe:
            yield f"{probe_name} must be a grpc probe of the health service"
        elif num(probe.get("port")) != grpc:
            yield f"{probe_name} grpc port {probe.get('port')} is not the gRPC port {grpc} ({grpc_key})"
        elif probe.get("service", "") not in ("", health):
            yield f"{probe_name} asks about {probe.get('service')!r}; the server registers {health!r}"
    startup = m(container.get("startupProbe"))
    budget = (num(startup.get("initialDelaySeconds")) or 0) + (num(startup.get("periodSeconds")) or 10) * (
        num(startup.get("failureThreshold")) or 3
    )
    if budget < MIN_STARTUP_S:
        yield f"startupProbe allows {budget} s, less than the {MIN_STARTUP_S} s loading a model may take"
    scraped = pod.annotations.get("prometheus.io/port")
    if scraped is not None and num(scraped) != metrics:
        yield f"annotation prometheus.io/port is {scraped}, the metrics port is {metrics} ({metrics_key})"
    grace = float(env.get("RAEE_GRACE_S", str(keys["RAEE_GRACE_S"].default)))
    sleep = num(m(m(m(container.get("lifecycle")).get("preStop")).get("sleep")).get("seconds")) or 0
    period = num(pod.spec.get("terminationGracePeriodSeconds"))
    period = DEFAULT_TERMINATION_S if period is None else period
    if period <= grace + sleep:
        yield (
            f"terminationGracePeriodSeconds {period} must exceed RAEE_GRACE_S {grace:g}"
            f" + preStop sleep {sleep} s, or shutdown is cut short"
        )


def address_problems(world: World, caller: Pod, env: dict[str, str]) -> Iterator[str]:
    """Each peer address: a Service port leading to the peer's port, which lets the caller in."""
    for key, (pattern, shape, role, port_name) in ADDRESSES.items():
        if key not in env:
            continue
        match = re.fullmatch(pattern, env[key])
        if not match:
            yield f"{key}={env[key]!r} is not {shape}"
            continue
        (host, port), value = (match.group(1).split(".")[0], int(match.group(2))), f"{key}={env[key]}"
        spec = m(m(world.get("Service", caller.namespace, host)).get("spec"))
        entry = next((m(p) for p in ls(spec.get("ports")) if num(m(p).get("port")) == port), None)
        if entry is None:
            yield f"{value}: there is no Service {host} with port {port}"
            continue
        selector = m(spec.get("selector"))
        targets = [
            p
            for p in world.pods
            if p.namespace == caller.namespace and selector and selector.items() <= p.labels.items()
        ]
        if not targets:
            yield f"{value}: Service {host} selects no pods"
        for target in targets:
            number = target.port(entry.get("targetPort", port))
            if target.role() != role or number is None or number != target.ports().get(port_name):
                yield f"{value}: leads to {ident(target.owner)} port {number}, not a {role} pod's {port_name}"
            elif not admitted(world, caller, target, number):
                yield f"{value}: no NetworkPolicy lets it reach {ident(target.owner)} on port {number}"


def admitted(world: World, caller: Pod, target: Pod, port: int) -> bool:
    """Whether the NetworkPolicies selecting ``target`` let ``caller`` in on ``port``."""
    policies = [
        spec
        for spec, policy in ((m(p.get("spec")), p) for p in world.objects.values())
        if policy.get("kind") == "NetworkPolicy"
        and namespace(policy) == target.namespace
        and "Ingress" in ls(spec.get("policyTypes", ["Ingress"]))
        and labels_match(m(spec.get("podSelector")), target.labels)
    ]
    ns_labels = m(m(m(world.get("Namespace", "default", caller.namespace)).get("metadata")).get("labels"))
    ns_labels |= {"kubernetes.io/metadata.name": caller.namespace}
    for rule in (m(r) for spec in policies for r in ls(spec.get("ingress"))):
        ports = [target.port(m(p).get("port")) for p in ls(rule.get("ports"))]
        for peer in [m(p) for p in ls(rule.get("from"))] or [{}]:
            in_namespace = (
                labels_match(m(peer["namespaceSelector"]), ns_labels)
                if "namespaceSelector" in peer
                else caller.namespace == target.namespace
            )
            pod_ok = "ipBlock" not in peer and labels_match(m(peer.get("podSelector")), caller.labels)
            if in_namespace and pod_ok and (not ports or port in ports):
                return True
    return not policies


def ingest_flow_problems(world: World) -> Iterator[str]:
    """Task specs from ConfigMaps; sharded ingests against the publish Jobs that finish them."""
    from raee.errors import TaskSpecError
    from raee.tasks import TaskSpec

    writers: list[tuple[str | None, str | None, int | None]] = []
    publishers: list[tuple[str | None, str | None, int | None, str]] = []
    for pod in (p for p in world.pods if not p.render.startswith("overlays/")):
        for container in pod.containers():
            command, args = command_of(container), [str(a) for a in ls(container.get("args"))]
            env, where = world.env(pod, container), f"{pod.where} container {container.get('name')}: "
            run = (
                flag(args, "--task", env),
                flag(args, "--version", env),
                num(flag(args, "--expect-shards", env)),
            )
            if command == "publish":
                publishers.append((*run, pod.where))
            if command != "ingest":
                continue
            path = PurePosixPath(flag(args, "--task-spec", env) or "")
            mounts = (m(v) for v in ls(container.get("volumeMounts")))
            mount = next((v for v in mounts if path.is_relative_to(str(v.get("mountPath")))), None)
            if mount is None:
                yield f"{where}--task-spec {path} is on no mounted volume"
                continue
            key = str(path.relative_to(str(mount.get("mountPath"))))
            cm_name, text, task = *world.config_file(pod, mount, key), None
            if text is None:
                yield f"{where}--task-spec {path}: " + (
                    f"ConfigMap {cm_name} has no key {key}" if cm_name else "not on a ConfigMap volume"
                )
            else:
                try:
                    task = TaskSpec.parse(yaml.safe_load(text), source=f"ConfigMap {cm_name} key {key}").name
                except TaskSpecError as exc:
                    yield f"{where}{exc}"
                if env.get("TASK", task) != task:
                    yield f"{where}env TASK={env.get('TASK')} (its data folder) is not the spec's name {task}"
            if "--shard-index" not in args:
                continue
            if pod.job.get("completionMode") != "Indexed":
                yield f"{pod.where}: --shard-index needs an Indexed Job (completionMode: Indexed)"
            if flag(args, "--shard-index", {}) != "$(JOB_COMPLETION_INDEX)":
                yield f"{where}--shard-index must be $(JOB_COMPLETION_INDEX)"
            shards = num(flag(args, "--shard-count", env))
            if shards is None or shards != num(pod.job.get("completions")):
                yield f"{pod.where}: --shard-count {shards} is not completions {pod.job.get('completions')}"
            if "--no-publish" not in args or "--version" not in args:
                yield f"{where}a sharded ingest needs --version and --no-publish (publish when all are in)"
            writers.append((task, run[1], shards))
    for task, version, shards, where in publishers:
        if not any(w[:2] == (task, version) for w in writers):
            yield f"{where}: publishes version {version} of {task}, which no sharded ingest Job writes"
        elif (task, version, shards) not in writers:
            yield f"{where}: --expect-shards {shards} is not the number of parts its sharded ingest writes"


def qdrant_problems(world: World, overlay: str) -> Iterator[str]:
    """Qdrant against its config file, its nodes against the collections and the clients."""
    for pod in (p for p in world.pods if p.render == overlay and p.role() == "qdrant"):
        container = next(c for c in pod.containers() if image_of(c)[0] == QDRANT_REPO)
        sts, nodes, config = m(pod.owner.get("spec")), num(m(pod.owner.get("spec")).get("replicas")), {}
        nodes = 1 if nodes is None else nodes
        for mount in (m(v) for v in ls(container.get("volumeMounts"))):
            if str(mount.get("mountPath")).startswith("/qdrant/config/"):
                text = world.config_file(pod, mount, str(mount.get("subPath")))[1]
                config = m(yaml.safe_load(text or "{}"))
        service, cluster = m(config.get("service")), m(config.get("cluster"))
        wanted = {
            "http": num(service.get("http_port")) or 6333,
            "grpc": num(service.get("grpc_port")) or 6334,
            "p2p": num(m(cluster.get("p2p")).get("port")) or 6335,
        }
        for name, number in wanted.items():
            if pod.ports().get(name) != number:
                yield f"{pod.where}: containerPort {name} is {pod.ports().get(name)}, its config: {number}"
        enabled = cluster.get("enabled") is True
        if enabled != (nodes > 1):
            yield f"{pod.where}: {nodes} node(s) but cluster.enabled is {enabled}: it must be {nodes > 1}"
        script = " ".join(str(x) for x in ls(container.get("command")) + ls(container.get("args")))
        first = f"{ident(pod.owner).split('/')[1]}-0.{sts.get('serviceName')}:{wanted['p2p']}"
        headless = m(m(world.get("Service", pod.namespace, str(sts.get("serviceName")))).get("spec"))
        if enabled and (
            first not in script or "--bootstrap" not in script or headless.get("clusterIP") != "None"
        ):
            yield f"{pod.where}: the nodes must bootstrap from http://{first}, a headless Service's name"
        server_key = secret_ref(container, "QDRANT__SERVICE__API_KEY")
        for client, c in ((p, c) for p in world.pods for c in p.containers()):
            client_key = secret_ref(c, "RAEE_QDRANT_API_KEY")
            if client_key and client_key != server_key:
                yield f"{client.where}: RAEE_QDRANT_API_KEY is {client_key}, Qdrant's key {server_key}"
            env = world.env(client, c)
            shards, copies = (num(env.get(k)) or 1 for k in ("RAEE_QDRANT_SHARDS", "RAEE_QDRANT_REPLICATION"))
            if command_of(c) != "ingest":
                continue
            if copies > nodes or (nodes > 1 and copies < 2):
                yield f"{client.where}: RAEE_QDRANT_REPLICATION {copies} for {nodes} node(s) in {overlay}" + (
                    " (more copies than nodes)" if copies > nodes else ": < 2, a node down loses data"
                )
            if nodes > 1 and shards < 2:
                yield f"{client.where}: RAEE_QDRANT_SHARDS {shards} < 2 in {overlay}: one node serves all"
