"""Each container: basics and pod security; the ``raee`` containers against their command's contract."""

from __future__ import annotations

import re

from .contract import (
    BAKED_CACHE_DIR,
    BAKED_TAG_SUFFIX,
    COMMANDS,
    DEFAULT_GRACE_S,
    FLOAT_ENV,
    INT_ENV,
    LOG_LEVELS,
    RUNTIME_ENV,
    Command,
)
from .model import (
    LONG_RUNNING_KINDS,
    Context,
    Env,
    Obj,
    PodTemplate,
    Problems,
    as_float,
    as_int,
    as_list,
    as_map,
    as_str,
    ident,
    image_parts,
    namespace_of,
    raee_command,
    under,
    var_refs,
)
from .workloads import selected_pods

MIN_STARTUP_BUDGET_S = 120


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


# Env keys holding a peer's address: (key, pattern, shape in messages, peer role, port name).
ADDRESS_ENV = (
    ("RAEE_QDRANT_URL", r"https?://([A-Za-z0-9.-]+):(\d+)/?", "http(s)://host:port", "qdrant", "http"),
    ("RAEE_RETRIEVAL_ADDR", r"([A-Za-z0-9.-]+):(\d+)", "host:port", "retrieval", "grpc"),
)


def check_addresses(ctx: Context, pod: PodTemplate, where: str, env: Env, problems: Problems) -> None:
    checks: list[tuple[str, str, str]] = []  # (env, role, port name)
    for name, pattern, shape, role, port_name in ADDRESS_ENV:
        value = env.values.get(name)
        if value is None:
            continue
        if re.fullmatch(pattern, value):
            checks.append((name, role, port_name))
        else:
            problems.add(where, f"{name}={value!r} is not {shape}")
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
        if flag == "--data" and path is not None and (path == "-" or path.startswith("s3://")):
            continue  # standard input, or an object store: no volume
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
