"""Every example of docs/api.md runs against a live pair: grpcurl, curl, tritonclient, raee-client."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee_cli.pair import ServicePair
from tests.conftest import start_demo_pair

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".venv-triton" / "bin"
BLOCKS = re.findall(r"```(sh|python)\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)


@pytest.fixture(scope="module")
async def docs_pair(served_home: Path, gemma: Backbone, encoder: QueryEncoder) -> AsyncIterator[ServicePair]:
    started = await start_demo_pair(served_home, gemma, encoder, http_port=0, http_host="127.0.0.1")
    yield started
    await started.stop()


def test_the_doc_has_every_kind_of_example() -> None:
    text = "\n".join(code for _, code in BLOCKS)
    for needle in ("grpcurl", "curl -s", "tritonclient.grpc", "tritonclient.http", "raee_client"):
        assert needle in text, needle


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
async def test_api_doc_example_runs(docs_pair: ServicePair, index: int, tmp_path: Path) -> None:
    kind, code = BLOCKS[index]
    assert docs_pair.http_url is not None
    code = code.replace("localhost:50052", docs_pair.inference_address)
    code = code.replace("localhost:8000", docs_pair.http_url.removeprefix("http://"))
    env = {"PATH": f"{TOOLS}{os.pathsep}{os.environ['PATH']}"}
    if kind == "sh":
        command = ["bash", "-e", "-o", "pipefail", "-c", code]
    elif "tritonclient" in code:
        command = [str(TOOLS / "python"), "-c", code]
    else:
        command = [sys.executable, "-c", code]
        env["PYTHONPATH"] = str(ROOT / "clients" / "python")
    if not Path(command[0]).exists() and command[0] != "bash":
        pytest.fail("tritonclient and grpcurl are missing: run `make install` (it builds .venv-triton)")
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=tmp_path
    )
    out, err = await process.communicate()
    output = out.decode()
    assert process.returncode == 0, (code, err.decode()[-2000:])
    assert '"error"' not in output, output
    # An answer came back: a label, the reflection listing, or a ModelInfer answer (grpcurl: base64).
    answered = ("positive", "negative", "inference.GRPCInferenceService", '"model_name": "demo-sentiment"')
    assert any(needle in output for needle in answered), output
