"""containers/pods.py: a rendered pod spec becomes the podman command the kubelet's would match.

No container runs here (``make e2e-containers`` does that); this checks the
translation itself on the real manifests of k8s/base.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_pods() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pods", REPO / "containers" / "pods.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pods"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pods = _load_pods()


@pytest.fixture(scope="module")
def base() -> list[dict[str, object]]:
    return list(pods.render(REPO / "k8s" / "base"))


def _pairs(command: list[str], flag: str) -> list[str]:
    return [command[i + 1] for i, word in enumerate(command) if word == flag]


def test_inference_runs_as_its_manifest_says(base: list[dict[str, object]], tmp_path: Path) -> None:
    spec = pods.RunSpec(
        spec=pods.pod_spec(base, "Deployment", "raee-inference"),
        container="inference",
        name="w",
        image="img",
        maps=pods.config_maps(base),
        volumes={"cache": tmp_path},
        publish={50052: 40000},
        cpu_cap=2,
    )
    command = spec.command("podman")
    assert command[-3:] == ["img", "serve", "inference"]
    assert _pairs(command, "--entrypoint") == ["raee"]
    assert _pairs(command, "--user") == ["10001:10001"]
    assert "--read-only" in command
    assert _pairs(command, "--cap-drop") == ["ALL"]
    assert _pairs(command, "--security-opt") == ["no-new-privileges"]
    assert _pairs(command, "--memory") == [str(4 * 2**30)]
    env = dict(item.split("=", 1) for item in _pairs(command, "--env"))
    assert env["RAEE_RETRIEVAL_ADDR"] == "raee-retrieval:50051"
    assert env["RAEE_GRACE_S"] == "20"
    assert env["RAEE_LOG_LEVEL"] == "INFO"  # from the ConfigMap raee-settings
    assert env["OMP_NUM_THREADS"] == "2"  # limits.cpu 4, capped at the cores given
    assert _pairs(command, "--volume") == [f"{tmp_path}:/var/cache/raee:rw"]
    assert [mount.split(":")[0] for mount in _pairs(command, "--tmpfs")] == ["/tmp"]
    assert _pairs(command, "--publish") == ["127.0.0.1:40000:50052"]


def test_secrets_stay_out_and_overrides_win(base: list[dict[str, object]]) -> None:
    spec = pods.RunSpec(
        spec=pods.pod_spec(base, "Deployment", "raee-retrieval"),
        container="retrieval",
        name="r",
        image="img",
        maps=pods.config_maps(base),
        env={"RAEE_QDRANT_URL": "", "RAEE_HOME": "/var/lib/raee"},
    )
    env = dict(item.split("=", 1) for item in _pairs(spec.command("podman"), "--env"))
    assert "RAEE_QDRANT_API_KEY" not in env
    assert env["RAEE_QDRANT_URL"] == ""
    assert env["RAEE_HOME"] == "/var/lib/raee"


def test_an_unmapped_volume_that_is_not_an_empty_dir_is_refused() -> None:
    spec = {
        "containers": [{"name": "c", "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "x"}}],
    }
    with pytest.raises(pods.ManifestError, match="volume data"):
        pods.RunSpec(spec=spec, container="c", name="n", image="i").command("podman")


def test_a_config_map_key_not_rendered_is_named(base: list[dict[str, object]]) -> None:
    spec = pods.RunSpec(
        spec=pods.pod_spec(base, "Deployment", "raee-retrieval"), container="retrieval", name="r", image="i"
    )
    with pytest.raises(pods.ManifestError, match="RAEE_QDRANT_URL"):
        spec.command("podman")
