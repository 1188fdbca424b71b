"""The slim client distribution raee-client (clients/python): its stubs, its calls, its install."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from raee_client import AsyncClient, Client, ItemError, RaeeError, Result, RetryPolicy

from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from raee_cli.pair import ServicePair
from tests.conftest import DEMO_TEST_TEXTS as TEXTS

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "clients" / "python"


def test_client_stubs_are_fresh(tmp_path: Path) -> None:
    sys.path.insert(0, str(CLIENT_DIR))
    try:
        import gen_stubs  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(CLIENT_DIR))
    generated = gen_stubs.generate(tmp_path)
    committed = sorted((CLIENT_DIR / "raee_client" / "_v1").glob("*.py*"))
    assert [p.name for p in generated] == [p.name for p in committed]
    stale = [p.name for p, c in zip(generated, committed, strict=True) if p.read_bytes() != c.read_bytes()]
    assert not stale, f"stale stubs {stale}: run `python clients/python/gen_stubs.py` and commit"


async def native(pair: ServicePair, task: str, texts: list[str]) -> list[Any]:
    async with InferenceClient(pair.inference_address) as client:
        return [await client.classify(task, text) for text in texts]


def same(answers: list[Any], expected: list[Any]) -> None:
    assert all(isinstance(a, Result) for a in answers)
    assert [(a.label, a.exit_layer, a.degraded) for a in answers] == [
        (e.label, e.exit_layer, e.degraded) for e in expected
    ]
    np.testing.assert_allclose(
        [a.probabilities for a in answers], [list(e.probabilities) for e in expected], atol=1e-5
    )


async def test_async_client_answers_equal_classify(pair: ServicePair, demo_spec: TaskSpec) -> None:
    expected = await native(pair, demo_spec.name, TEXTS)
    async with AsyncClient(pair.inference_address) as client:
        same([await client.classify(demo_spec.name, text) for text in TEXTS], expected)
        many = await client.classify_many(demo_spec.name, [*TEXTS, ""], chunk_size=3)
        same(many[:-1], expected)
        assert isinstance(many[-1], ItemError) and many[-1].index == len(TEXTS)
        assert many[-1].code == "INVALID_ARGUMENT" and "text" in many[-1].message
        task = await client.get_task(demo_spec.name)
        assert task.labels == demo_spec.label_names and task.version == expected[0].task_version
        assert [t.name for t in await client.list_tasks()] == [demo_spec.name]
        with pytest.raises(RaeeError) as caught:
            await client.classify("no-such-task", "hello")
        assert caught.value.code == "NOT_FOUND"


async def test_sync_client_answers_equal_classify(pair: ServicePair, demo_spec: TaskSpec) -> None:
    expected = await native(pair, demo_spec.name, TEXTS)

    def run() -> tuple[list[Result], list[Result | ItemError]]:
        with Client(pair.inference_address) as client:
            one = [client.classify(demo_spec.name, text) for text in TEXTS]
            return one, client.classify_many(demo_spec.name, TEXTS, chunk_size=5)

    one, many = await asyncio.to_thread(run)
    same(one, expected)
    same(list(many), expected)


class CountingPolicy(RetryPolicy):
    """Counts the retries (the backoff delays taken)."""

    def __init__(self) -> None:
        super().__init__(attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
        object.__setattr__(self, "retries", [])

    def delays(self) -> Iterator[float]:
        for delay in super().delays():
            self.retries.append(delay)  # type: ignore[attr-defined]
            yield delay


async def test_retries_only_unavailable_and_resource_exhausted(
    pair: ServicePair, demo_spec: TaskSpec
) -> None:
    unreachable = CountingPolicy()
    async with AsyncClient("localhost:1", retry=unreachable, timeout_s=5) as client:
        with pytest.raises(RaeeError) as caught:
            await client.classify(demo_spec.name, "hello")
    assert caught.value.code == "UNAVAILABLE" and len(unreachable.retries) == 2  # type: ignore[attr-defined]
    refused = CountingPolicy()
    async with AsyncClient(pair.inference_address, retry=refused) as client:
        with pytest.raises(RaeeError) as caught:
            await client.classify(demo_spec.name, "hello", mode="fixed")
    assert caught.value.code == "INVALID_ARGUMENT" and refused.retries == []  # type: ignore[attr-defined]


async def run_command(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=cwd
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_raee_classify_file_uses_the_slim_client(
    pair: ServicePair, demo_spec: TaskSpec, tmp_path: Path
) -> None:
    expected = await native(pair, demo_spec.name, TEXTS)
    path = tmp_path / "texts.jsonl"
    path.write_text(
        "\n".join(json.dumps({"text": t}) if i % 2 else json.dumps(t) for i, t in enumerate(TEXTS))
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CLIENT_DIR)])}
    code, out, err = await run_command(
        sys.executable, "-m", "raee_cli.main", "classify", "--task", demo_spec.name,
        "--addr", pair.inference_address, "--file", str(path), "--json", env=env,
    )  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["text"], r["label"], r["exit_layer"]) for r in rows] == [
        (t, e.label, e.exit_layer) for t, e in zip(TEXTS, expected, strict=True)
    ]


PROBE = """
import importlib.util, json, sys
from raee_client import Client
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("raee") is None
with Client(sys.argv[1]) as client:
    answers = client.classify_many(sys.argv[2], sys.argv[3:], chunk_size=2)
    print(json.dumps([[a.label, a.exit_layer] for a in answers]))
"""


@pytest.mark.slow
async def test_installs_into_a_fresh_venv_without_torch(
    pair: ServicePair, demo_spec: TaskSpec, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    code, _, err = await run_command(sys.executable, "-m", "venv", str(venv))
    assert code == 0, err
    python = str(venv / "bin" / "python")
    code, _, err = await run_command(python, "-m", "pip", "install", "-q", str(CLIENT_DIR))
    assert code == 0, err[-3000:]
    expected = await native(pair, demo_spec.name, TEXTS)
    code, out, err = await run_command(
        python,
        "-c",
        PROBE,
        pair.inference_address,
        demo_spec.name,
        *TEXTS,
        env={"PATH": os.environ["PATH"]},
        cwd=tmp_path,  # not the repository: nothing of the server may be importable
    )
    assert code == 0, err[-3000:]
    assert json.loads(out) == [[e.label, e.exit_layer] for e in expected]
