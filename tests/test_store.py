"""The exit store contract, run against both backends: the embedded engine and qdrant-client."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from raee.errors import StoreError, TaskNotFoundError
from raee.exit_info import ExitInfo
from raee.store import ExitRecord, ExitStore, VersionMeta, open_store
from raee.tasks import TaskSpec

DIM = 8
SPEC = TaskSpec.from_flags("toy", "{text} It was", ["negative=terrible", "positive=great"])


def records(count: int, seed: int = 0) -> list[ExitRecord]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        ExitRecord(
            point_id=i,
            vector=vectors[i],
            example_id=f"train.jsonl:{i + 1}",
            text=f"text {i}",
            label=SPEC.label_names[i % 2],
            label_index=i % 2,
            exit=ExitInfo(layers=(i % 5, 18), probs=(0.5 + (i % 5) / 10, 0.99)),
        )
        for i in range(count)
    ]


def meta(marker: str = "") -> VersionMeta:
    return VersionMeta(
        spec=SPEC, backbone_id="toy/L18/000", encoder_id="enc", num_layers=18, stats={"m": marker}
    )


def publish(store: ExitStore, rows: list[ExitRecord], marker: str = "") -> str:
    with store.begin_version("toy", DIM) as writer:
        writer.add(rows[: len(rows) // 2])
        writer.add(rows[len(rows) // 2 :])
        return writer.publish(meta(marker)).version


def test_unknown_task(store: ExitStore) -> None:
    with pytest.raises(TaskNotFoundError, match="'toy' has no published version"):
        store.get_task("toy")
    with pytest.raises(TaskNotFoundError):
        store.search("toy", np.zeros((1, DIM), dtype=np.float32), 3)
    assert store.list_tasks() == []


def test_publish_then_search_returns_exact_neighbours(store: ExitStore) -> None:
    rows = records(50)
    version = publish(store, rows)
    info = store.get_task("toy")
    assert (info.version, info.points, info.dim, info.num_layers) == (version, 50, DIM, 18)
    assert info.spec == SPEC
    assert [t.task for t in store.list_tasks()] == ["toy"]

    queries = np.stack([rows[3].vector, rows[40].vector])
    result = store.search("toy", queries, k=5)
    assert result.version.version == version
    expected = np.argsort(-(np.stack([r.vector for r in rows]) @ queries.T), axis=0)[:5].T
    assert [[n.point_id for n in hits] for hits in result.neighbours] == expected.tolist()
    nearest = result.neighbours[0][0]
    assert nearest.similarity == pytest.approx(1.0, abs=1e-5)
    assert nearest.squared_distance == pytest.approx(0.0, abs=1e-5)
    assert (nearest.exit, nearest.label, nearest.example_id) == (rows[3].exit, rows[3].label, "train.jsonl:4")


def test_same_ids_upserted_twice_count_once(store: ExitStore) -> None:
    rows = records(20)
    with store.begin_version("toy", DIM) as writer:
        writer.add(rows)
        writer.add(rows)
        assert writer.publish(meta()).points == 20


def test_new_version_replaces_old_and_reader_sees_it_without_reopening(store: ExitStore) -> None:
    first = publish(store, records(30, seed=1), marker="first")
    assert store.get_task("toy").stats["m"] == "first"
    second = publish(store, records(30, seed=2), marker="second")
    assert second != first
    current = store.get_task("toy")
    assert (current.version, current.points, current.stats["m"]) == (second, 30, "second")
    assert store.search("toy", records(1, seed=2)[0].vector[None], 1).neighbours[0][0].similarity > 0.999


def test_failed_write_is_discarded_and_previous_version_stays(store: ExitStore) -> None:
    first = publish(store, records(10), marker="kept")
    with pytest.raises(RuntimeError, match="boom"), store.begin_version("toy", DIM) as writer:
        writer.add(records(10, seed=5))
        raise RuntimeError("boom")
    assert store.get_task("toy").version == first
    assert store.search("toy", records(10)[0].vector[None], 1).neighbours[0][0].point_id == 0


def test_unpublished_version_is_invisible(store: ExitStore) -> None:
    writer = store.begin_version("toy", DIM)
    writer.add(records(10))
    with pytest.raises(TaskNotFoundError):
        store.get_task("toy")
    writer.discard()


def test_vector_dimension_is_checked(store: ExitStore) -> None:
    bad = records(1)[0]
    bad = ExitRecord(**{**bad.__dict__, "vector": np.zeros(DIM + 1, dtype=np.float32)})
    with pytest.raises(ValueError, match="shape"), store.begin_version("toy", DIM) as writer:
        writer.add([bad])


def test_bad_task_names_are_refused(store: ExitStore) -> None:
    with pytest.raises(ValueError, match=r"task: '\.\./etc' is not a valid task name"):
        store.get_task("../etc")


def test_embedded_store_allows_one_writer_per_task(tmp_path: Path) -> None:
    store = open_store(home=tmp_path)
    writer = store.begin_version("toy", DIM)
    with pytest.raises(StoreError, match="another ingest is writing it"):
        store.begin_version("toy", DIM)
    writer.discard()
    store.begin_version("toy", DIM).discard()


def test_embedded_versions_are_cleaned_up(tmp_path: Path) -> None:
    store = open_store(home=tmp_path)
    publish(store, records(10))
    abandoned = store.begin_version("toy", DIM)  # e.g. a killed ingest: never published or discarded
    abandoned.add(records(3))
    del abandoned
    second = publish(store, records(10, seed=3))
    assert [p.name for p in (tmp_path / "tasks" / "toy" / "versions").iterdir()] == [second]


def test_embedded_store_is_readable_by_a_second_process_while_first_holds_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = open_store(home=tmp_path)
    publish(store, records(10))
    store.search("toy", records(1)[0].vector[None], 1)  # this process now holds the shard open
    code = (
        "import numpy as np; from raee.store import open_store; "
        f"s = open_store(home={str(tmp_path)!r}); "
        f"print(s.search('toy', np.ones((1, {DIM}), dtype=np.float32), 2).version.points)"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert output.stdout.strip() == "10"


@pytest.mark.parametrize(
    "damage",
    ["garbage", "incomplete", "a list", "wrong types", "version folder deleted"],
)
def test_damaged_embedded_store_is_a_store_error_naming_the_task(tmp_path: Path, damage: str) -> None:
    store = open_store(home=tmp_path / "home")
    version = publish(store, records(10))
    with store.begin_version("other", DIM) as writer:
        writer.add(records(4))
        writer.publish(meta())
    manifest = tmp_path / "home" / "tasks" / "toy" / "CURRENT.json"
    text = manifest.read_text()
    if damage == "garbage":
        manifest.write_bytes(b"\x00\xffnot json at all")
    elif damage == "incomplete":
        manifest.write_text(text[: len(text) // 2])
    elif damage == "a list":
        manifest.write_text("[1, 2, 3]")
    elif damage == "wrong types":
        manifest.write_text(text.replace('"num_layers": 18', '"num_layers": {"x": 1}'))
    else:
        shutil.rmtree(manifest.parent / "versions" / version)
    fresh = open_store(home=tmp_path / "home")  # nothing cached: reads the damage
    if damage != "version folder deleted":  # there the manifest itself is fine
        with pytest.raises(StoreError, match="task 'toy'"):
            fresh.get_task("toy")
    with pytest.raises(StoreError, match="task 'toy'"):
        fresh.search("toy", records(1)[0].vector[None, :], 3)
    # The other task is still listed; the damaged one is skipped (and logged).
    listed = [v.task for v in fresh.list_tasks()]
    assert "other" in listed
    assert ("toy" in listed) == (damage == "version folder deleted")
    # The store already serving the version before the damage keeps a clear error too.
    assert store.get_task("other").points == 4


def test_embedded_store_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        store = open_store(home=tmp_path / "home")
        publish(store, records(10))
    finally:
        os.umask(old)
    tasks = tmp_path / "home" / "tasks"
    for path in [tasks, *tasks.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_symlink():
            continue
        assert mode & 0o077 == 0, f"{path.relative_to(tmp_path)} is {oct(mode)}"
