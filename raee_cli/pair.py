"""Both services on one machine: ``raee up``, the demo, the eval and end-to-end tests.

:func:`start_pair` runs both in this process. :func:`start_process_pair` starts the
retrieval service as its own process (``raee serve retrieval``), as it is
deployed: its encoder may then spin its threads during every run (``RAEE_ENCODER_SPIN``);
in one process it spins for a lone query only.
"""

from __future__ import annotations

import asyncio
import ctypes
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from inference_service import server as inference_server
from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings, RetrievalSettings, child_environment
from retrieval_service import server as retrieval_server

READY_TIMEOUT_S = 300.0  # the first start of a fresh cache exports the encoder
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass
class RetrievalProcess:
    """``raee serve retrieval`` run as a child process; ``port`` and ``stop`` as a RetrievalServer's."""

    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    async def stop(self, grace_s: float) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.process.wait, grace_s + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                await asyncio.to_thread(self.process.wait)
        self.log.close()


async def start_retrieval_process(settings: RetrievalSettings) -> RetrievalProcess:
    """Start the retrieval service in a child process and wait until it reports SERVING."""
    port = settings.port or _free_port()
    environment = child_environment(settings.model_copy(update={"port": port}))
    log = tempfile.TemporaryFile()  # noqa: SIM115 - the child writes it until stop() closes it
    command = [sys.executable, "-m", "raee_cli.main", "serve", "retrieval"]
    process = subprocess.Popen(
        command, env=environment, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent
    )
    child = RetrievalProcess(process, port, log)
    try:
        await _wait_serving(child)
    except BaseException:
        await child.stop(0)
        raise
    return child


async def _wait_serving(child: RetrievalProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with grpc.aio.insecure_channel(f"localhost:{child.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                child.log.seek(0)
                tail = child.log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"the retrieval process exited with {child.process.returncode}:\n{tail}")
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass  # not listening yet
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the retrieval process did not report SERVING within {READY_TIMEOUT_S:.0f} s")


def _end_with_parent() -> None:
    """In the child, before exec: SIGTERM when this process dies, however it dies (Linux)."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return int(probe.getsockname()[1])


class _Running(Protocol):
    @property
    def port(self) -> int: ...

    async def stop(self, grace_s: float) -> None: ...


class RunningPair:
    """Both services started on this machine: their addresses, and stop."""

    retrieval: _Running
    inference: inference_server.InferenceServer

    @property
    def inference_address(self) -> str:
        return f"localhost:{self.inference.port}"

    @property
    def http_url(self) -> str | None:
        """The worker's REST base URL, or None when its REST port is off."""
        port = self.inference.http_port
        return f"http://localhost:{port}" if port is not None else None

    @property
    def retrieval_address(self) -> str:
        return f"localhost:{self.retrieval.port}"

    async def stop(self, grace_s: float = 5.0) -> None:
        await self.inference.stop(grace_s)
        await self.retrieval.stop(grace_s)


@dataclass
class ServicePair(RunningPair):
    retrieval: retrieval_server.RetrievalServer
    inference: inference_server.InferenceServer


@dataclass
class ProcessPair(RunningPair):
    """A pair whose retrieval service is a child process."""

    retrieval: RetrievalProcess
    inference: inference_server.InferenceServer


async def start_pair(
    retrieval_config: RetrievalSettings,
    inference_config: InferenceSettings,
    *,
    backbone: Backbone | None = None,
    encoder: QueryEncoder | None = None,
) -> ServicePair:
    """Start the retrieval service, then the worker pointed at it (port 0 picks free ports).

    The encoder shares this process with the backbone, so its threads spin for a lone
    query only, whatever ``RAEE_ENCODER_SPIN`` says.
    """
    retrieval = await retrieval_server.start(retrieval_config, encoder=encoder, beside_backbone=True)
    worker = await _start_worker(retrieval, retrieval_config, inference_config, backbone)
    return ServicePair(retrieval, worker)


async def start_process_pair(
    retrieval_config: RetrievalSettings,
    inference_config: InferenceSettings,
    *,
    backbone: Backbone | None = None,
) -> ProcessPair:
    """:func:`start_pair` with the retrieval service in a child process, which loads its own encoder."""
    retrieval = await start_retrieval_process(retrieval_config)
    worker = await _start_worker(retrieval, retrieval_config, inference_config, backbone)
    return ProcessPair(retrieval, worker)


async def _start_worker(
    retrieval: _Running,
    retrieval_config: RetrievalSettings,
    inference_config: InferenceSettings,
    backbone: Backbone | None,
) -> inference_server.InferenceServer:
    """The worker pointed at ``retrieval``, which is stopped if the worker cannot start."""
    token = (
        inference_config.retrieval_token.get_secret_value() or retrieval_config.auth_token.get_secret_value()
    )
    inference_config = inference_config.model_copy(
        update={"retrieval_addr": f"localhost:{retrieval.port}", "retrieval_token": SecretStr(token)}
    )
    try:
        return await inference_server.start(inference_config, backbone=backbone)
    except BaseException:
        await retrieval.stop(0)
        raise
