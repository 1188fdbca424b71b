"""The ingest job end to end, with the real Gemma backbone and MiniLM encoder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ingest import length_sorted_batches, run_ingest
from raee.backbone import Backbone
from raee.data import DataError, read_examples
from raee.encoder import QueryEncoder
from raee.exit_info import ExitInfo
from raee.store import open_store
from raee.tasks import TaskSpec
from raee_cli.demo import DEMO_DIR
from raee_cli.main import main


def test_length_sorted_batches_cover_every_index_once() -> None:
    batches = length_sorted_batches([5, 1, 9, 3, 3, 7], batch_size=4)
    assert [b.tolist() for b in batches] == [[1, 3, 4, 0], [5, 2]]


def test_demo_ingests_serves_and_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["demo", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "task demo-sentiment: published version" in out
    assert "points              48" in out
    assert "with a correct exit" in out
    assert "full-model accuracy" in out
    assert "accuracy: RAEE" in out
    assert out.rstrip().endswith("services stopped cleanly")
    store = open_store(home=tmp_path)
    first = store.get_task("demo-sentiment")
    assert first.points == 48
    assert len(first.stats["accuracy_per_exit_pct"]) == 19

    # $RAEE_HOME instead of --home: the demo's ingest and its retrieval service both use it.
    monkeypatch.setenv("RAEE_HOME", str(tmp_path))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # no ./.raee to fall back on
    assert main(["demo"]) == 0  # the task is there: served as it is
    out = capsys.readouterr().out
    assert "already published" in out
    assert "accuracy: RAEE" in out
    assert store.get_task("demo-sentiment").version == first.version

    args = ["ingest", "--task-spec", str(DEMO_DIR / "task.yaml"), "--data", str(DEMO_DIR / "train.jsonl")]
    assert main([*args, "--home", str(tmp_path), "--no-progress"]) == 0  # a re-ingest: a new version
    second = store.get_task("demo-sentiment")
    assert second.version != first.version
    assert second.points == 48
    versions = tmp_path / "tasks" / "demo-sentiment" / "versions"
    assert [p.name for p in versions.iterdir()] == [second.version]


def test_stored_exit_information_matches_the_backbone(
    gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec, tmp_path: Path
) -> None:
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    store = open_store(f"local:{tmp_path / 'qdrant'}")  # the server code path, in local mode
    result = run_ingest(
        demo_spec, examples[:20], backbone=gemma, encoder=encoder, store=store, progress=False
    )
    assert result.version.points == 20
    assert result.version.backbone_id == str(gemma.id)
    probabilities = gemma.for_task(demo_spec).exit_probabilities([e.text for e in examples[:20]])
    keys = encoder.encode([demo_spec.key_text(e.text) for e in examples[:20]])
    neighbours = store.search("demo-sentiment", keys, k=1).neighbours
    for index, hits in enumerate(neighbours):
        expected = ExitInfo.from_probabilities(probabilities[index], examples[index].label_index)
        assert hits[0].point_id == index
        assert hits[0].exit.layers == expected.layers
        np.testing.assert_allclose(hits[0].exit.probs, expected.probs, atol=1e-5)
    store.close()


def test_invalid_rows_stop_the_ingest_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "fine", "label": "positive"}\n{"text": "meh", "label": "neutral"}\n')
    args = [
        "ingest",
        "--task",
        "t",
        "--template",
        "{text} It was",
        "--label",
        "negative=terrible",
        "--label",
        "positive=great",
        "--data",
        str(data),
        "--home",
        str(tmp_path / "home"),
    ]
    assert main(args) == 2
    assert f"{data}:2: unknown label 'neutral'" in capsys.readouterr().err
    assert not (tmp_path / "home" / "tasks").exists()

    assert main([*args, "--skip-invalid", "--no-progress"]) == 0
    assert open_store(home=tmp_path / "home").get_task("t").points == 1


def test_overlong_prompts_are_reported_by_line_before_the_model_loads(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    gemma: Backbone,
    encoder: QueryEncoder,
) -> None:
    data = tmp_path / "train.jsonl"
    rows = [("fine", "positive"), ("bad", "negative"), ("word " * 700, "positive"), ("great", "positive")]
    data.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows))
    args = ["ingest", "--task", "t", "--template", "{text} It was", "--label", "negative=terrible"]
    args += [
        "--label",
        "positive=great",
        "--data",
        str(data),
        "--home",
        str(tmp_path / "home"),
        "--no-progress",
    ]

    def no_load(*_: object, **__: object) -> Backbone:
        raise AssertionError("the backbone was loaded before the prompt lengths were checked")

    with monkeypatch.context() as patch:
        patch.setattr(Backbone, "load", no_load)
        assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(
        rf"{re.escape(str(data))}:3: the prompt is \d+ tokens, more than the backbone's 512", err
    )
    assert not (tmp_path / "home" / "tasks").exists()

    assert main([*args, "--skip-invalid"]) == 0
    assert open_store(home=tmp_path / "home").get_task("t").points == 3

    # The library refuses it too, by file:line, not by its place in a length-sorted batch.
    spec = TaskSpec.from_flags("t", "{text} It was", ["negative=terrible", "positive=great"])
    examples, _ = read_examples(data, spec)
    with pytest.raises(DataError, match=r"train.jsonl:3: the prompt is \d+ tokens"):
        run_ingest(
            spec,
            examples,
            backbone=gemma,
            encoder=encoder,
            store=open_store(home=tmp_path / "h2"),
            progress=False,
        )


def test_spec_errors_are_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "fine", "label": "positive"}\n')
    assert (
        main(
            [
                "ingest",
                "--task",
                "t",
                "--template",
                "no slot",
                "--label",
                "a",
                "--label",
                "b",
                "--data",
                str(data),
                "--home",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "template: must contain the slot {text}" in capsys.readouterr().err


def test_killed_ingest_leaves_the_previous_version_served(tmp_path: Path) -> None:
    home = tmp_path / "home"
    spec_path = DEMO_DIR / "task.yaml"
    assert (
        main(
            [
                "ingest",
                "--task-spec",
                str(spec_path),
                "--data",
                str(DEMO_DIR / "train.jsonl"),
                "--home",
                str(home),
                "--no-progress",
            ]
        )
        == 0
    )
    store = open_store(home=home)
    before = store.get_task("demo-sentiment")

    big = tmp_path / "big.jsonl"
    rows = [json.loads(line) for line in (DEMO_DIR / "train.jsonl").read_text().splitlines()]
    with big.open("w") as handle:
        for copy in range(25):
            for row in rows:
                handle.write(json.dumps({"text": f"{row['text']} ({copy})", "label": row["label"]}) + "\n")
    command = [
        sys.executable,
        "-m",
        "raee_cli.main",
        "ingest",
        "--task-spec",
        str(spec_path),
        "--data",
        str(big),
        "--home",
        str(home),
        "--batch-size",
        "8",
    ]
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    assert process.stderr is not None
    deadline = time.monotonic() + 240
    seen = ""
    while not any(int(done) >= 100 for done in re.findall(r"(\d+)/1200 ", seen)):  # well into the run
        chunk = process.stderr.read(64)
        assert chunk and time.monotonic() < deadline, seen[-2000:]
        seen += chunk
    process.send_signal(signal.SIGKILL)
    process.wait()

    after = store.get_task("demo-sentiment")
    assert after.version == before.version
    keys = QueryEncoder().encode([after.spec.key_text("i loved every minute of this film .")])
    assert (
        store.search("demo-sentiment", keys, k=3).neighbours[0][0].text
        == "i loved every minute of this film ."
    )

    # Re-running converges: same count, and the abandoned half version is gone.
    assert (
        main(
            [
                "ingest",
                "--task-spec",
                str(spec_path),
                "--data",
                str(DEMO_DIR / "train.jsonl"),
                "--home",
                str(home),
                "--no-progress",
            ]
        )
        == 0
    )
    final = store.get_task("demo-sentiment")
    assert final.points == before.points
    assert [p.name for p in (home / "tasks" / "demo-sentiment" / "versions").iterdir()] == [final.version]


def test_sharded_ingest_publishes_once_every_shard_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"local:{tmp_path / 'qdrant'}"  # qdrant-client local mode: the server code path
    spec_args = ["--task-spec", str(DEMO_DIR / "task.yaml"), "--data", str(DEMO_DIR / "train.jsonl")]

    def shard(index: int) -> int:
        return main(
            [
                "ingest",
                *spec_args,
                "--store-url",
                url,
                "--no-progress",
                "--version",
                "v1",
                "--shard-index",
                str(index),
                "--shard-count",
                "3",
                "--no-publish",
            ]
        )

    def publish() -> int:
        return main(
            [
                "publish",
                "--task",
                "demo-sentiment",
                "--version",
                "v1",
                "--expect-shards",
                "3",
                "--store-url",
                url,
            ]
        )

    assert shard(0) == 0
    assert shard(1) == 0
    assert shard(1) == 0  # a retried pod rewrites the same ids
    assert "not yet published" in capsys.readouterr().out
    assert publish() == 2
    assert "shards done [0, 1], expected 0..2" in capsys.readouterr().err
    assert shard(2) == 0
    assert publish() == 0
    assert "published version v1 (48 points, 3 shards)" in capsys.readouterr().out

    store = open_store(url)
    sharded = store.get_task("demo-sentiment")
    store.close()
    assert (sharded.version, sharded.points, sharded.stats["examples"]) == ("v1", 48, 48)
    home = tmp_path / "home"
    assert main(["ingest", *spec_args, "--home", str(home), "--no-progress"]) == 0
    whole = open_store(home=home).get_task("demo-sentiment")
    np.testing.assert_allclose(sharded.stats["accuracy_per_exit_pct"], whole.stats["accuracy_per_exit_pct"])


def test_sharded_ingest_needs_a_server_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "ingest",
        "--task-spec",
        str(DEMO_DIR / "task.yaml"),
        "--data",
        str(DEMO_DIR / "train.jsonl"),
        "--home",
        str(tmp_path),
        "--version",
        "v1",
        "--shard-index",
        "0",
        "--shard-count",
        "2",
        "--no-publish",
    ]
    assert main(args) == 2
    assert "needs a Qdrant server" in capsys.readouterr().err
    assert main(args[:-1]) == 2
    assert "needs all of --version" in capsys.readouterr().err
