"""The ingest and publish containers: their task spec, and sharded ingests against their publish Jobs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

from .model import (
    Context,
    Env,
    Obj,
    PodTemplate,
    Problems,
    as_int,
    as_list,
    as_map,
    as_str,
    raee_command,
    under,
)

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
METRICS = {"accuracy", "matthews_corrcoef"}


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
