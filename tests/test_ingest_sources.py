"""`raee ingest --data` from an S3-compatible object store and from standard input.

The store is moto's S3 server, started by the test on 127.0.0.1 and reached over
HTTP with the standard AWS_* variables, as a cluster's MinIO or Ceph would be.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from raee.data import DataError, _chunked_lines, read_examples
from raee.store import open_store
from raee.tasks import TaskSpec
from raee_cli.demo import DEMO_DIR

SPEC = TaskSpec.from_flags("t", "{text} It was", ["negative=terrible", "positive=great"])
BUCKET = "raee-data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A running S3-compatible server and the environment that points a client at it."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "raee-test",
        "AWS_SECRET_ACCESS_KEY": "raee-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name=env["AWS_DEFAULT_REGION"],
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="demo/train.jsonl", Body=(DEMO_DIR / "train.jsonl").read_bytes())
    client.put_object(
        Bucket=BUCKET,
        Key="bad.jsonl",
        Body=b'{"text": "fine", "label": "positive"}\n{"text": "x", "label": "neutral"}\nnot json\n',
    )
    client.put_object(Bucket=BUCKET, Key="d.csv", Body=b'text,label\n"good, really",positive\nbad,negative\n')
    yield env
    server.stop()


@pytest.fixture
def in_s3_env(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    return s3_env


def test_rows_from_s3_are_named_by_uri_and_line(in_s3_env: dict[str, str]) -> None:
    examples, errors = read_examples(f"s3://{BUCKET}/bad.jsonl", SPEC)
    assert [(e.example_id, e.text) for e in examples] == [("bad.jsonl:1", "fine")]
    assert [str(e) for e in errors] == [
        f"s3://{BUCKET}/bad.jsonl:2: unknown label 'neutral'; expected one of ['negative', 'positive']",
        f"s3://{BUCKET}/bad.jsonl:3: not valid JSON (Expecting value)",
    ]
    examples, errors = read_examples(f"s3://{BUCKET}/d.csv", SPEC)
    assert ([e.text for e in examples], errors) == (["good, really", "bad"], [])


def test_s3_problems_name_the_uri(in_s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/missing.jsonl:0: cannot read: NoSuchKey"):
        read_examples(f"s3://{BUCKET}/missing.jsonl", SPEC)
    with pytest.raises(DataError, match=r"s3://no-such-bucket/x.jsonl:0: cannot read: NoSuchBucket"):
        read_examples("s3://no-such-bucket/x.jsonl", SPEC)
    with pytest.raises(DataError, match=r"an S3 URI is s3://bucket/key"):
        read_examples(f"s3://{BUCKET}", SPEC)
    with pytest.raises(DataError, match=r"unknown format '.parquet'"):
        read_examples(f"s3://{BUCKET}/x.parquet", SPEC)
    # The endpoint comes from the environment: with another one, the same URI is unreachable.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(DataError, match=rf"s3://{BUCKET}/bad.jsonl:0: cannot read: Could not connect"):
        read_examples(f"s3://{BUCKET}/bad.jsonl", SPEC)


def test_streamed_lines_survive_any_chunking() -> None:
    data = b'{"a": 1}\n\n{"b": "x\\ny"}\r\nlast without newline'
    for size in (1, 2, 3, 7, 1 << 20):
        assert list(_chunked_lines(io.BytesIO(data), size)) == data.splitlines(keepends=True)


def raee(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "raee_cli.main", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_stdin_rows_are_named_stdin_and_line(tmp_path: Path) -> None:
    rows = b'{"text": "fine", "label": "positive"}\n\n{"text": "", "label": "positive"}\nnot json\n'
    spec = str(DEMO_DIR / "task.yaml")
    result = raee("ingest", "--task-spec", spec, "--data", "-", "--home", str(tmp_path), stdin=rows)
    assert result.returncode == 2, result.stderr
    assert "<stdin>:3: text is empty" in result.stderr
    assert "<stdin>:4: not valid JSON (Expecting value)" in result.stderr
    csv_rows = b"label,text\npositive,fine\nnegative\n"
    result = raee(
        "ingest",
        "--task-spec",
        spec,
        "--data",
        "-",
        "--data-format",
        "csv",
        "--home",
        str(tmp_path),
        stdin=csv_rows,
    )
    assert result.returncode == 2
    assert "<stdin>:3: missing text" in result.stderr


@pytest.mark.slow
def test_ingest_from_s3_and_from_stdin_publish(tmp_path: Path, s3_env: dict[str, str]) -> None:
    spec = str(DEMO_DIR / "task.yaml")
    from_s3 = raee(
        "ingest",
        "--task-spec",
        spec,
        "--data",
        f"s3://{BUCKET}/demo/train.jsonl",
        "--home",
        str(tmp_path / "s3"),
        "--no-progress",
        env=s3_env,
    )
    assert from_s3.returncode == 0, from_s3.stderr
    lines = (DEMO_DIR / "train.jsonl").read_bytes().splitlines(keepends=True)[:8]
    from_stdin = raee(
        "ingest",
        "--task-spec",
        spec,
        "--data",
        "-",
        "--home",
        str(tmp_path / "stdin"),
        "--no-progress",
        stdin=b"".join(lines),
    )
    assert from_stdin.returncode == 0, from_stdin.stderr
    for home, points in ((tmp_path / "s3", 48), (tmp_path / "stdin", 8)):
        store = open_store(home=home)
        try:
            version = store.get_task("demo-sentiment")
        finally:
            store.close()
        assert version.points == points
    assert version.stats["data_file"] == "-"
