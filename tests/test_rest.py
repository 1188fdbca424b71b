"""The worker's REST port: OIP v2 over HTTP (tritonclient, JSON and binary) and POST /v1/classify."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.serving.server import MAX_MESSAGE_BYTES
from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from raee_cli.pair import ServicePair
from tests.conftest import DEMO_TEST_TEXTS as TEXTS
from tests.conftest import start_demo_pair
from tests.test_oip import assert_same_answers, run_triton

TOKEN = "rest-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
async def rest_pair(served_home: Path, gemma: Backbone, encoder: QueryEncoder) -> AsyncIterator[ServicePair]:
    started = await start_demo_pair(
        served_home, gemma, encoder, http_port=0, http_host="127.0.0.1", auth_token=TOKEN
    )
    yield started
    await started.stop()


@pytest.fixture
async def http(rest_pair: ServicePair) -> AsyncIterator[httpx.AsyncClient]:
    assert rest_pair.http_url is not None
    async with httpx.AsyncClient(base_url=rest_pair.http_url, timeout=60) as client:
        yield client


async def classify(pair: ServicePair, task: str, texts: list[str], **kwargs: Any) -> list[Any]:
    async with InferenceClient(pair.inference_address, token=TOKEN) as client:
        return [await client.classify(task, text, **kwargs) for text in texts]


@pytest.mark.slow
@pytest.mark.parametrize("encoding", ["binary", "json"])
async def test_tritonclient_http_answers_equal_classify(
    rest_pair: ServicePair, demo_spec: TaskSpec, encoding: str
) -> None:
    expected = await classify(rest_pair, demo_spec.name, TEXTS)
    assert rest_pair.http_url is not None
    address = rest_pair.http_url.removeprefix("http://")
    flags = ["--json"] if encoding == "json" else []
    got = await run_triton("http", address, demo_spec.name, "--token", TOKEN, *flags, *TEXTS)
    assert (got["live"], got["ready"], got["model_ready"], got["missing_ready"]) == (True, True, True, False)
    assert_same_answers(got, expected, demo_spec.label_names)
    assert got["metadata"]["versions"] == [expected[0].task_version]
    assert got["metadata"]["outputs"][1] == {
        "name": "probabilities",
        "datatype": "FP32",
        "shape": [-1, demo_spec.num_labels],
    }
    assert got["bad_datatype"].startswith("400") and "datatype" in got["bad_datatype"]


async def test_tritonclient_grpc_sends_the_bearer_token(rest_pair: ServicePair, demo_spec: TaskSpec) -> None:
    got = await run_triton("grpc", rest_pair.inference_address, demo_spec.name, "--token", TOKEN, TEXTS[0])
    assert got["label"] == [(await classify(rest_pair, demo_spec.name, TEXTS[:1]))[0].label]


async def test_v1_classify_equals_classify(
    rest_pair: ServicePair, http: httpx.AsyncClient, demo_spec: TaskSpec
) -> None:
    for mode, extra in (("raee", {}), ("full", {}), ("fixed", {"layer": 4})):
        expected = await classify(rest_pair, demo_spec.name, TEXTS, mode=mode, **extra)
        response = await http.post(
            "/v1/classify", json={"task": demo_spec.name, "texts": TEXTS, "mode": mode, **extra}, headers=AUTH
        )
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["label"], r["exit_layer"], r["degraded"]) for r in results] == [
            (a.label, a.exit_layer, a.degraded) for a in expected
        ]
        np.testing.assert_allclose(
            [r["probabilities"] for r in results], [list(a.probabilities) for a in expected], atol=1e-5
        )


async def test_rest_errors_are_4xx_with_a_message(http: httpx.AsyncClient, demo_spec: TaskSpec) -> None:
    task = demo_spec.name
    infer = f"/v2/models/{task}/infer"
    good_tensor = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["fine"]}
    cases: list[tuple[str, Any, int, str]] = [
        ("/v1/classify", b"{not json", 400, "body"),
        ("/v1/classify", b"\xff\xfe", 400, "body"),
        ("/v1/classify", b"[1, 2]", 400, "body"),
        ("/v1/classify", {"task": task}, 400, "texts"),
        ("/v1/classify", {"task": task, "texts": []}, 400, "texts"),
        ("/v1/classify", {"task": task, "texts": ["ok", ""]}, 400, "texts[1]"),
        ("/v1/classify", {"task": task, "texts": ["ok"], "mode": "fast"}, 400, "mode"),
        ("/v1/classify", {"task": task, "texts": ["ok"], "mode": "fixed"}, 400, "layer"),
        ("/v1/classify", {"task": task, "texts": ["ok"], "temperature": 2}, 400, "temperature"),
        ("/v1/classify", {"task": "no-such-task", "texts": ["ok"]}, 404, "no-such-task"),
        ("/v1/classify", {"task": "Bad Name", "texts": ["ok"]}, 400, "task"),
        (infer, b"nope", 400, "body"),
        (infer, {"inputs": []}, 400, "inputs"),
        (infer, {"inputs": [{**good_tensor, "datatype": "INT32"}]}, 400, "inputs[0].datatype"),
        (infer, {"inputs": [{**good_tensor, "name": "words"}]}, 400, "inputs[0].name"),
        (infer, {"inputs": [{**good_tensor, "shape": [2]}]}, 400, "inputs[0].data"),
        (infer, {"inputs": [{**good_tensor, "shape": "1"}]}, 400, "inputs[0].shape"),
        (infer, {"inputs": [{**good_tensor, "data": [1]}]}, 400, "inputs[0].data"),
        (infer, {"inputs": [good_tensor], "outputs": [{"name": "logits"}]}, 400, "outputs[0].name"),
        (infer, {"inputs": [good_tensor], "parameters": {"k": "3"}}, 400, "parameters.k"),
        ("/v2/models/no-such-task/infer", {"inputs": [good_tensor]}, 404, "no-such-task"),
    ]
    for path, body, status, field in cases:
        if isinstance(body, bytes):
            response = await http.post(path, content=body, headers=AUTH)
        else:
            response = await http.post(path, json=body, headers=AUTH)
        assert response.status_code == status, (path, body, response.text)
        assert field in response.json()["error"], (path, body, response.text)
    too_big = b"x" * (MAX_MESSAGE_BYTES + 1)
    for path in ("/v1/classify", infer):
        response = await http.post(path, content=too_big, headers=AUTH)
        assert response.status_code == 413 and "limit" in response.json()["error"]


async def test_rest_bearer_token_and_open_health(http: httpx.AsyncClient, demo_spec: TaskSpec) -> None:
    assert (await http.get("/v2/health/live")).json() == {"live": True}
    assert (await http.get("/v2/health/ready")).status_code == 200
    for path in (f"/v2/models/{demo_spec.name}", "/v2"):
        refused = await http.get(path)
        assert refused.status_code == 401 and "Bearer" in refused.json()["error"]
        wrong = await http.get(path, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
    refused = await http.post("/v1/classify", json={"task": demo_spec.name, "texts": ["hi"]})
    assert refused.status_code == 401
    metadata = (await http.get(f"/v2/models/{demo_spec.name}", headers=AUTH)).json()
    version = metadata["versions"][0]
    ready = await http.get(f"/v2/models/{demo_spec.name}/versions/{version}/ready", headers=AUTH)
    assert ready.status_code == 200 and ready.json()["ready"]
    stale = await http.get(f"/v2/models/{demo_spec.name}/versions/v-old/ready", headers=AUTH)
    assert stale.status_code == 400 and not stale.json()["ready"]
