"""The exit store's index policy (raee/store/index.py) on the real engines, and the scale benchmark."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import qdrant_edge as qe
from qdrant_client import QdrantClient, models

from raee.exit_info import ExitInfo
from raee.store import ExitRecord, VersionMeta
from raee.store.edge import EdgeExitStore
from raee.store.index import DEFAULT_POLICY, IndexPolicy, threshold_kb
from raee.store.server import QdrantExitStore
from raee.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
DIM = 32
SPEC = TaskSpec.from_flags("toy", "{text} It was", ["negative=terrible", "positive=great"])
META = VersionMeta(spec=SPEC, backbone_id="toy/L18/000", encoder_id="enc", num_layers=18)


def clustered(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM))
    x = centres[rng.integers(0, 20, count)] + 0.5 * rng.standard_normal((count, DIM))
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


def publish(store: EdgeExitStore, vectors: np.ndarray) -> Path:
    """Publish ``vectors`` as task ``toy``; the version's shard folder."""
    exit_info = ExitInfo(layers=(3, 18), probs=(0.7, 0.99))
    with store.begin_version("toy", DIM) as writer:
        writer.add(
            [ExitRecord(i, v, f"t:{i}", f"text {i}", "negative", 0, exit_info) for i, v in enumerate(vectors)]
        )
        version = writer.publish(META).version
    return store.root / "toy" / "versions" / version


def true_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]


def indexed_count(folder: Path) -> int:
    shard = qe.EdgeShard.load(str(folder))
    try:
        return int(shard.info().indexed_vectors_count)
    finally:
        shard.close()


def test_a_version_from_the_threshold_on_is_searched_through_hnsw(tmp_path: Path) -> None:
    policy = IndexPolicy(threshold=1000)
    vectors, queries = clustered(3000, 0), clustered(50, 1)
    store = EdgeExitStore(tmp_path, policy=policy)
    folder = publish(store, vectors)

    assert indexed_count(folder) == len(vectors)  # the graph was built before publishing
    config = json.loads((folder / "edge_config.json").read_text())
    assert config["hnsw_config"]["m"] == policy.hnsw_m
    assert config["quantization_config"] == {"scalar": {"type": "int8", "quantile": 0.99, "always_ram": True}}
    hits = store.search("toy", queries, 12).neighbours
    want = true_top(vectors, queries, 12)
    recall = np.mean(
        [len({n.point_id for n in got} & set(row)) / 12 for got, row in zip(hits, want, strict=True)]
    )
    assert recall >= 0.95
    # Rescoring with the float vectors: similarities are exact, not int8 approximations.
    for got, query in zip(hits, queries, strict=True):
        exact = vectors[[n.point_id for n in got]] @ query
        assert np.allclose([n.similarity for n in got], exact, atol=1e-5)


def test_a_version_below_the_threshold_is_searched_exactly(tmp_path: Path) -> None:
    vectors, queries = clustered(800, 2), clustered(30, 3)
    store = EdgeExitStore(tmp_path)
    assert DEFAULT_POLICY.exact_for(len(vectors))
    folder = publish(store, vectors)

    assert indexed_count(folder) == 0
    hits = store.search("toy", queries, 12).neighbours
    assert [[n.point_id for n in got] for got in hits] == true_top(vectors, queries, 12).tolist()


class RecordingClient(QdrantClient):
    """qdrant-client's local mode, keeping what each collection was created with: local mode
    accepts the index settings but does not keep them, so get_collection cannot show them."""

    created: dict[str, dict[str, Any]]

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:
        self.created = {**getattr(self, "created", {}), collection_name: kwargs}
        return super().create_collection(collection_name, **kwargs)


def test_the_server_backend_creates_versions_with_the_shared_index_settings(tmp_path: Path) -> None:
    policy = IndexPolicy(threshold=5000)
    client = RecordingClient(path=str(tmp_path / "local"))
    store = QdrantExitStore(client, location="local", policy=policy)
    writer = store.begin_version("toy", DIM)
    created = client.created[writer.collection]

    edge = json.loads(
        (
            publish(EdgeExitStore(tmp_path / "edge", policy=policy), clustered(10, 4)) / "edge_config.json"
        ).read_text()
    )
    hnsw = created["hnsw_config"]
    assert isinstance(hnsw, models.HnswConfigDiff)
    assert (hnsw.m, hnsw.ef_construct, hnsw.full_scan_threshold) == (
        edge["hnsw_config"]["m"],
        edge["hnsw_config"]["ef_construct"],
        edge["hnsw_config"]["full_scan_threshold"],
    )
    assert created["optimizers_config"].indexing_threshold == edge["optimizers"]["indexing_threshold"]
    assert edge["optimizers"]["indexing_threshold"] == threshold_kb(5000, DIM)
    scalar = created["quantization_config"].scalar
    assert (scalar.type.value, scalar.quantile, scalar.always_ram) == ("int8", 0.99, True)
    assert client.get_collection(writer.collection).config.params.vectors.size == DIM
    writer.discard()
    client.close()


def test_scale_benchmark_reports_every_measure(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    subprocess.run(
        [
            sys.executable,
            "benchmarks/scale.py",
            "--sizes",
            "2000",
            "--threshold",
            "1000",
            "--queries",
            "20",
            "--exact-queries",
            "5",
            "--out",
            str(out),
            "--tmp",
            str(tmp_path),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert set(report) == {"sizes", "command", "date", "index"}
    assert report["index"]["threshold"] == 1000
    measured = report["sizes"]["2000"]
    assert {
        "build_s",
        "bytes_per_point",
        "serving_rss_bytes_per_point",
        "p50_ms",
        "p99_ms",
        "exact_p50_ms",
        "recall_at_12",
        "exit_agreement",
    } <= set(measured)
    assert measured["points"] == 2000 and not measured["exact_search"]
    assert measured["recall_at_12"] >= 0.9 and measured["exit_agreement"] >= 0.9
