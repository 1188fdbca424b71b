"""The Qdrant server the manifests run speaks the version of the client the code uses."""

from __future__ import annotations

import re
from pathlib import Path

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
