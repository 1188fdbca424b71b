"""Batch-1 latency of one answer through each protocol the worker speaks, in one interleaved run.

Starts both services in this process (the demo task is ingested into ``--home``
when it is absent; REST on a free localhost port), then sends the same texts one
at a time through

* ``native``: ``raee.v1.InferenceService/Classify`` (gRPC);
* ``oip_grpc``: ``inference.GRPCInferenceService/ModelInfer`` with raw tensors, as
  tritonclient sends them;
* ``oip_rest``: ``POST /v2/models/{task}/infer`` with JSON tensors;
* ``rest_classify``: ``POST /v1/classify``;

the four protocols alternating request by request (their order rotating), so
that noise hits all alike. Every client runs in this process's event loop, as the
servers do: the ratios compare the protocols, not the client libraries.

    python benchmarks/protocols.py --home .raee-bench --rounds 200 --out docs/results/protocols.json
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx
import numpy as np
from _common import emit

from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.errors import TaskNotFoundError
from raee.oip import grpc_predict_v2_pb2 as pb
from raee.oip import grpc_predict_v2_pb2_grpc as pb_grpc
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR, demo_spec
from raee_cli.pair import start_pair

PROTOCOLS = ("native", "oip_grpc", "oip_rest", "rest_classify")


def ensure_demo(home: Path, backbone: Backbone, encoder: QueryEncoder) -> str:
    from ingest import run_ingest

    spec = demo_spec()
    store = open_store(home=home)
    try:
        store.get_task(spec.name)
    except TaskNotFoundError:
        examples, _ = read_examples(DEMO_DIR / "train.jsonl", spec)
        run_ingest(spec, examples, backbone=backbone, encoder=encoder, store=store, progress=False)
    finally:
        store.close()
    return spec.name


async def run(args: argparse.Namespace) -> dict[str, object]:
    backbone, encoder = Backbone.load(args.backbone), QueryEncoder()
    task = ensure_demo(args.home, backbone, encoder)
    texts, _ = read_examples(DEMO_DIR / "test.jsonl", demo_spec())
    pair = await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=args.home),
        InferenceSettings(port=0, metrics_port=0, http_port=0, http_host="127.0.0.1"),
        backbone=backbone,
        encoder=encoder,
    )
    assert pair.http_url is not None
    channel = grpc.aio.insecure_channel(pair.inference_address)
    oip = pb_grpc.GRPCInferenceServiceStub(channel)
    labels: dict[str, list[str]] = {p: [] for p in PROTOCOLS}

    async def native(text: str) -> str:
        answer = await client.classify(task, text)
        return str(answer.label)

    async def oip_grpc(text: str) -> str:
        request = pb.ModelInferRequest(model_name=task)
        request.inputs.add(name="text", datatype="BYTES", shape=[1])
        request.raw_input_contents.append(struct.pack("<I", len(text.encode())) + text.encode())
        answer = await oip.ModelInfer(request, timeout=60)
        return bytes(answer.raw_output_contents[0][4:]).decode()

    async def oip_rest(text: str) -> str:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        response = await http.post(f"/v2/models/{task}/infer", json=body)
        return str(response.json()["outputs"][0]["data"][0])

    async def rest_classify(text: str) -> str:
        response = await http.post("/v1/classify", json={"task": task, "texts": [text]})
        return str(response.json()["results"][0]["label"])

    calls: dict[str, Callable[[str], Awaitable[str]]] = {
        "native": native,
        "oip_grpc": oip_grpc,
        "oip_rest": oip_rest,
        "rest_classify": rest_classify,
    }
    latencies: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    try:
        async with (
            InferenceClient(pair.inference_address) as client,
            httpx.AsyncClient(base_url=pair.http_url, timeout=60) as http,
        ):
            for warm in texts[:2]:
                for call in calls.values():
                    await call(warm.text)
            for round_ in range(args.rounds):
                text = texts[round_ % len(texts)].text
                order = PROTOCOLS[round_ % 4 :] + PROTOCOLS[: round_ % 4]
                for protocol in order:
                    started = time.perf_counter()
                    labels[protocol].append(await calls[protocol](text))
                    latencies[protocol].append(1000 * (time.perf_counter() - started))
    finally:
        await channel.close()
        await pair.stop()
    assert all(labels[p] == labels["native"] for p in PROTOCOLS), "the protocols disagree"
    p50 = {p: float(np.percentile(latencies[p], 50)) for p in PROTOCOLS}
    p95 = {p: float(np.percentile(latencies[p], 95)) for p in PROTOCOLS}
    return {
        "task": task,
        "requests_per_protocol": args.rounds,
        "batch1_p50_ms": p50,
        "batch1_p95_ms": p95,
        "p50_ratio_to_native": {p: p50[p] / p50["native"] for p in PROTOCOLS},
        "same_labels": True,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--home", type=Path, default=Path(".raee-bench"), help="embedded store folder")
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--rounds", type=int, default=200, help="requests per protocol")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
