"""Balancing follows scaling: a worker started before a second retrieval process calls both.

The worker resolves one DNS name (served by a small DNS server in this test, on
127.0.0.1) whose answer gains the second process's address once it is up, the way
a headless Service's does when a pod becomes ready. gRPC re-resolves a name only
when a connection closes; the retrieval servers close theirs after
``RAEE_MAX_CONNECTION_AGE_S``, so the worker finds the new process without any
restart. Calls are counted from each retrieval process's own /metrics.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from inference_service.server import start as start_inference
from ingest import run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings
from raee.store import open_store
from raee.tasks import TaskSpec
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR

pytestmark = pytest.mark.slow

NAME = "retrieval.raee.test"
AGE_S = 2.0
RETRIEVAL_METHODS = ("GetExitDistribution", "BatchGetExitDistribution", "GetTask", "ListTasks")


class StubDns:
    """A DNS server on 127.0.0.1 answering A queries for one name; ``addresses`` may change."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name
        self.addresses = list(addresses)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def close(self) -> None:
        self._sock.close()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self._sock.recvfrom(4096)
            except OSError:
                return
            reply = self._answer(query)
            if reply is not None:
                self._sock.sendto(reply, peer)

    def _answer(self, query: bytes) -> bytes | None:
        labels, offset = [], 12
        while offset < len(query) and query[offset]:
            labels.append(query[offset + 1 : offset + 1 + query[offset]].decode("ascii", "replace"))
            offset += 1 + query[offset]
        if offset + 5 > len(query):
            return None
        (qtype,) = struct.unpack(">H", query[offset + 1 : offset + 3])
        known = ".".join(labels).lower() == self.name
        answers = list(self.addresses) if known and qtype == 1 else []  # A records only
        flags = 0x8580 if known else 0x8583  # response, authoritative; NOERROR or NXDOMAIN
        header = query[:2] + struct.pack(">HHHHH", flags, 1, len(answers), 0, 0)
        records = b"".join(
            struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address) for address in answers
        )
        return header + query[12 : offset + 5] + records


def port_free_on(*hosts: str) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind((hosts[0], 0))
            port = int(sock.getsockname()[1])
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port


def free_port() -> int:
    return port_free_on("127.0.0.1")


def retrieval_calls(metrics_port: int) -> int:
    """Retrieval calls this process answered (health checks left out), from its own Prometheus counter."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("raee_grpc_request_seconds_count{")
        and 'code="OK"' in line
        and any(f'method="{m}"' in line for m in RETRIEVAL_METHODS)
    )


def wait_serving(address: str, process: subprocess.Popen[bytes]) -> None:
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"retrieval process at {address} exited"
            try:
                request = health_pb2.HealthCheckRequest(service="raee.v1.RetrievalService")
                reply = health.Check(request, timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"retrieval at {address} never became SERVING"
            time.sleep(0.5)


@pytest.fixture
def homes(tmp_path: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec) -> tuple[Path, Path]:
    """Two embedded stores holding the same demo task: one per retrieval process."""
    first = tmp_path / "a"
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    store = open_store(home=first)
    run_ingest(demo_spec, examples[:24], backbone=gemma, encoder=encoder, store=store, progress=False)
    store.close()
    second = tmp_path / "b"
    shutil.copytree(first, second)
    return first, second


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def start_retrieval(home: Path, host: str, port: int, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RAEE_HOME": str(home),
        "RAEE_LISTEN_HOST": host,
        "RAEE_RETRIEVAL_PORT": str(port),
        "RAEE_RETRIEVAL_METRICS_PORT": str(metrics_port),
        "RAEE_MAX_CONNECTION_AGE_S": str(AGE_S),
        "RAEE_MAX_CONNECTION_AGE_GRACE_S": "5",
    }
    return subprocess.Popen([sys.executable, "-m", "raee_cli.main", "serve", "retrieval"], env=env)


async def test_worker_reaches_a_retrieval_process_started_after_it(
    homes: tuple[Path, Path],
    processes: list[subprocess.Popen[bytes]],
    gemma: Backbone,
    demo_spec: TaskSpec,
) -> None:
    port = port_free_on("127.0.0.1", "127.0.0.2")
    metrics = [free_port(), free_port()]
    processes.append(start_retrieval(homes[0], "127.0.0.1", port, metrics[0]))
    wait_serving(f"127.0.0.1:{port}", processes[0])
    dns = StubDns(NAME, ["127.0.0.1"])
    worker = await start_inference(
        InferenceSettings(
            port=0,
            metrics_port=0,
            listen_host="127.0.0.1",
            retrieval_addr=f"dns://127.0.0.1:{dns.port}/{NAME}:{port}",
            max_wait_ms=1.0,
            retrieval_timeout_ms=30_000.0,  # this machine is shared: no degraded answers from slowness
        ),
        backbone=gemma,
    )
    try:
        async with InferenceClient(f"127.0.0.1:{worker.running.port}", timeout_s=60) as client:
            answer = await client.classify(demo_spec.name, "a lovely film with a big heart .")
            assert not answer.degraded
            assert retrieval_calls(metrics[0]) > 0

            # A second retrieval process comes up; the name now resolves to both.
            processes.append(start_retrieval(homes[1], "127.0.0.2", port, metrics[1]))
            wait_serving(f"127.0.0.2:{port}", processes[1])
            dns.addresses = ["127.0.0.1", "127.0.0.2"]
            joined = time.monotonic()

            # gRPC re-resolves at most every 30 s (its default); the age makes it re-resolve at all.
            deadline = time.monotonic() + 30 + 6 * AGE_S + 60
            while retrieval_calls(metrics[1]) == 0:
                assert time.monotonic() < deadline, "the worker never called the second retrieval process"
                answer = await client.classify(demo_spec.name, "a lovely film with a big heart .")
                assert not answer.degraded
                await asyncio.sleep(0.2)
            print(f"second retrieval process first called {time.monotonic() - joined:.1f} s after it joined")
            # Both processes answer from now on (round_robin over the two addresses).
            counts = [retrieval_calls(m) for m in metrics]
            for _ in range(20):
                assert not (await client.classify(demo_spec.name, "the film is a mess")).degraded
            after = [retrieval_calls(m) for m in metrics]
            calls = [a - n for a, n in zip(after, counts, strict=True)]
            print(f"retrieval calls per process over 20 classify calls: {calls}")
            assert all(n > 0 for n in calls)
    finally:
        await worker.stop(1.0)
        dns.close()
