"""The manifests against the repository: the Dockerfile, pyproject.toml and (``--source-check``) the code."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .contract import COMMANDS, DEFAULT_GRACE_S
from .model import Obj, Problems, as_int, as_list, as_map, as_str, image_parts, pod_templates, raee_command

SOURCE_DIRS = ("raee", "ingest", "retrieval_service", "inference_service")
# Keys every command may read outside its own config class (the store, the cache, logging).
SHARED_ENV = frozenset(
    {"RAEE_QDRANT_URL", "RAEE_QDRANT_API_KEY", "RAEE_CACHE_DIR", "RAEE_LOG_LEVEL", "RAEE_LOG_FORMAT"}
)
# The config classes in raee/serving/config.py, checked with --source-check.
CONFIG_CLASSES = {("serve", "retrieval"): "RetrievalSettings", ("serve", "inference"): "InferenceSettings"}

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
