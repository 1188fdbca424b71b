"""`raee up`, `raee classify` and graceful shutdown on SIGTERM, as real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ingest import run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.store import open_store
from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR

# `raee classify` imports the slim client, which an install maps from clients/python.
CLIENT_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parent.parent / "clients" / "python"), os.environ.get("PYTHONPATH", "")]
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    home = tmp_path_factory.mktemp("up-home")
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    run_ingest(
        demo_spec, examples, backbone=gemma, encoder=encoder, store=open_store(home=home), progress=False
    )
    ports = {name: free_port() for name in ("retrieval", "inference", "metrics", "http")}
    env = {
        **os.environ,
        "RAEE_RETRIEVAL_METRICS_PORT": str(ports["metrics"]),
        "RAEE_INFERENCE_HTTP_PORT": str(ports["http"]),
        "RAEE_INFERENCE_HTTP_HOST": "127.0.0.1",
        "RAEE_GRACE_S": "20",
        "PYTHONUNBUFFERED": "1",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raee_cli.main",
            "up",
            "--home",
            str(home),
            "--retrieval-port",
            str(ports["retrieval"]),
            "--inference-port",
            str(ports["inference"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    line = ""
    while not line.startswith("raee up:"):
        line = process.stdout.readline()
        assert line and time.monotonic() < deadline, "raee up did not start"
    yield process, ports
    if process.poll() is None:
        process.kill()
        process.wait()


def test_classify_command_and_metrics(
    up: tuple[subprocess.Popen[str], dict[str, int]], demo_spec: TaskSpec
) -> None:
    _, ports = up
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "raee_cli.main",
            "classify",
            "--task",
            demo_spec.name,
            "--addr",
            f"localhost:{ports['inference']}",
            "a lovely film with a big heart .",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=CLIENT_ENV,
    )
    label, exit_part, *_ = result.stdout.split("\t")
    assert label in demo_spec.label_names
    assert exit_part.startswith("exit ") and exit_part.endswith("/18")
    metrics = (
        urllib.request.urlopen(f"http://localhost:{ports['metrics']}/metrics", timeout=10).read().decode()
    )
    assert 'raee_grpc_request_seconds_count{code="OK",method="Classify"}' in metrics
    assert "raee_inference_batch_groups_bucket" in metrics
    assert 'raee_exit_layer_count{mode="raee",service="inference"}' in metrics


def test_sigterm_finishes_in_flight_calls_then_refuses_new_ones(
    up: tuple[subprocess.Popen[str], dict[str, int]], demo_spec: TaskSpec
) -> None:
    process, ports = up

    async def scenario() -> None:
        async with InferenceClient(f"localhost:{ports['inference']}", timeout_s=60) as client:
            await client.classify(demo_spec.name, "warm up")
            in_flight = [
                asyncio.ensure_future(client.classify(demo_spec.name, f"sentence number {i} was great"))
                for i in range(32)
            ]
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*in_flight)
            assert all(a.label in demo_spec.label_names for a in answers)
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.classify(demo_spec.name, "too late")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    asyncio.run(scenario())
    assert process.wait(timeout=60) == 0


def test_services_as_separate_processes_configured_by_env(
    tmp_path: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    """The commands the Kubernetes manifests run, configured the way they configure them."""
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    run_ingest(
        demo_spec,
        examples[:24],
        backbone=gemma,
        encoder=encoder,
        store=open_store(home=tmp_path),
        progress=False,
    )
    assert (
        subprocess.run(
            [sys.executable, "-m", "raee_cli.main", "prepare"], capture_output=True, timeout=300
        ).returncode
        == 0
    )
    retrieval_port, inference_port, http_port = free_port(), free_port(), free_port()
    # The grace period of the Kubernetes manifests (the worker admits only what drains in it),
    # and a generous retrieval timeout: the first call of a fresh process is slow on a loaded machine.
    base = {**os.environ, "RAEE_GRACE_S": "20", "RAEE_RETRIEVAL_TIMEOUT_MS": "10000"}
    retrieval = subprocess.Popen(
        [sys.executable, "-m", "raee_cli.main", "serve", "retrieval"],
        env={
            **base,
            "RAEE_HOME": str(tmp_path),
            "RAEE_RETRIEVAL_PORT": str(retrieval_port),
            "RAEE_RETRIEVAL_METRICS_PORT": "0",
        },
    )
    inference = subprocess.Popen(
        [sys.executable, "-m", "raee_cli.main", "serve", "inference", "--max-batch", "8"],
        env={
            **base,
            "RAEE_INFERENCE_PORT": str(inference_port),
            "RAEE_INFERENCE_METRICS_PORT": "0",
            "RAEE_INFERENCE_HTTP_PORT": str(http_port),
            "RAEE_INFERENCE_HTTP_HOST": "127.0.0.1",
            "RAEE_RETRIEVAL_ADDR": f"localhost:{retrieval_port}",
        },
    )

    async def scenario() -> None:
        for port, service in (
            (retrieval_port, "raee.v1.RetrievalService"),
            (inference_port, "raee.v1.InferenceService"),
        ):
            async with grpc.aio.insecure_channel(f"localhost:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                deadline = time.monotonic() + 180
                while True:  # the probe Kubernetes runs: SERVING once the models are loaded
                    try:
                        reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.aio.AioRpcError:
                        pass
                    assert time.monotonic() < deadline, f"{service} never became SERVING"
                    await asyncio.sleep(0.5)
        texts = [f"sentence {i} of the load was great ." for i in range(24)]
        async with InferenceClient(f"localhost:{inference_port}", timeout_s=60) as client:
            answer = await client.classify(demo_spec.name, "a lovely film with a big heart .")
            assert answer.label in demo_spec.label_names and not answer.degraded

            # SIGTERM to the retrieval service under load: every call still succeeds
            # (finished by the draining service, or answered degraded after it left).
            load = [asyncio.ensure_future(client.classify(demo_spec.name, t)) for t in texts]
            await asyncio.sleep(0.1)
            retrieval.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*load)
            assert all(a.label in demo_spec.label_names for a in answers)
            assert await asyncio.to_thread(retrieval.wait, 60) == 0
            assert (await client.classify(demo_spec.name, "after retrieval left")).degraded

            # SIGTERM to the worker under load: in-flight calls finish, new ones are refused.
            load = [asyncio.ensure_future(client.classify(demo_spec.name, t)) for t in texts]
            await asyncio.sleep(0.1)
            inference.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*load)
            assert all(a.label in demo_spec.label_names for a in answers)
            await asyncio.sleep(0.5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.classify(demo_spec.name, "too late")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

    try:
        asyncio.run(scenario())
    except BaseException:
        for process in (inference, retrieval):
            process.kill()
        raise
    assert inference.wait(timeout=60) == 0  # SIGTERM'd inside the scenario: a clean exit
    assert retrieval.wait(timeout=60) == 0
