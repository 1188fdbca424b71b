"""TLS, mutual TLS between the services, bearer tokens, secrets kept out of logs, store outages."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from ingest import run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.serving.metrics import serve_metrics, serve_metrics_of
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import open_store
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, inference_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from raee_cli.client import InferenceClient
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair, start_pair
from retrieval_service import server as retrieval_server
from tests.conftest import requests_counted

RETRIEVAL_TOKEN = "retrieval-token-7f3a9c"
INFERENCE_TOKEN = "inference-token-2b8e41"


def _issue(
    name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, ca: bool
) -> tuple[bytes, bytes, x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, subject, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, _, ca_name, ca_key = _issue("raee test CA", None, ca=True)
    server_cert, server_key, _, _ = _issue("localhost", (ca_name, ca_key), ca=False)
    client_cert, client_key, _, _ = _issue("raee-inference", (ca_name, ca_key), ca=False)
    _, _, rogue_name, rogue_key = _issue("rogue CA", None, ca=True)
    rogue_cert, rogue_client_key, _, _ = _issue("intruder", (rogue_name, rogue_key), ca=False)
    files = {
        "ca": ca_cert,
        "server_cert": server_cert,
        "server_key": server_key,
        "client_cert": client_cert,
        "client_key": client_key,
        "rogue_cert": rogue_cert,
        "rogue_key": rogue_client_key,
    }
    paths = {}
    for name, data in files.items():
        (folder / f"{name}.pem").write_bytes(data)
        paths[name] = str(folder / f"{name}.pem")
    return paths


@pytest.fixture(scope="module")
def home(
    tmp_path_factory: pytest.TempPathFactory, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> Path:
    folder = tmp_path_factory.mktemp("secure-home")
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    run_ingest(
        demo_spec,
        examples[:24],
        backbone=gemma,
        encoder=encoder,
        store=open_store(home=folder),
        progress=False,
    )
    return folder


@pytest.fixture(scope="module")
async def secure_pair(
    home: Path, pki: dict[str, str], gemma: Backbone, encoder: QueryEncoder
) -> AsyncIterator[ServicePair]:
    pair = await start_pair(
        RetrievalSettings(
            port=0,
            metrics_port=0,
            home=str(home),
            auth_token=RETRIEVAL_TOKEN,
            tls_cert=pki["server_cert"],
            tls_key=pki["server_key"],
            tls_client_ca=pki["ca"],
        ),
        InferenceSettings(
            port=0,
            metrics_port=0,
            auth_token=INFERENCE_TOKEN,
            tls_cert=pki["server_cert"],
            tls_key=pki["server_key"],
            http_port=0,
            http_host="127.0.0.1",
            retrieval_token=RETRIEVAL_TOKEN,
            retrieval_tls_ca=pki["ca"],
            retrieval_tls_cert=pki["client_cert"],
            retrieval_tls_key=pki["client_key"],
        ),
        backbone=gemma,
        encoder=encoder,
    )
    yield pair
    await pair.stop()


async def test_token_and_tls_end_to_end(
    secure_pair: ServicePair, pki: dict[str, str], demo_spec: TaskSpec
) -> None:
    async with InferenceClient(
        secure_pair.inference_address, token=INFERENCE_TOKEN, tls_ca=pki["ca"]
    ) as client:
        answer = await client.classify(demo_spec.name, "a lovely film with a big heart .")
    # Not degraded: the worker reached the retrieval service over mutual TLS with its token.
    assert not answer.degraded
    assert answer.label in demo_spec.label_names


async def test_rest_port_has_the_same_tls_and_token(
    secure_pair: ServicePair, pki: dict[str, str], demo_spec: TaskSpec
) -> None:
    port = secure_pair.inference.http_port
    body = {"task": demo_spec.name, "texts": ["a lovely film with a big heart ."]}
    verify = ssl.create_default_context(cafile=pki["ca"])
    async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=verify, timeout=60) as http:
        answer = await http.post(
            "/v1/classify", json=body, headers={"authorization": f"Bearer {INFERENCE_TOKEN}"}
        )
        assert answer.status_code == 200 and answer.json()["results"][0]["label"] in demo_spec.label_names
        for headers in (
            {},
            {"authorization": "Bearer wrong-token"},
            {"authorization": f"Bearer {RETRIEVAL_TOKEN}"},
        ):
            refused = await http.post("/v1/classify", json=body, headers=headers)
            assert refused.status_code == 401
        assert (await http.get("/v2/health/ready")).status_code == 200  # probes need no token
    async with httpx.AsyncClient(base_url=f"http://localhost:{port}", timeout=10) as plain:
        with pytest.raises(httpx.HTTPError):
            await plain.post("/v1/classify", json=body)


@pytest.mark.parametrize("token", ["", "wrong-token", RETRIEVAL_TOKEN])
async def test_missing_or_wrong_token_is_unauthenticated(
    secure_pair: ServicePair, pki: dict[str, str], demo_spec: TaskSpec, token: str
) -> None:
    async with InferenceClient(secure_pair.inference_address, token=token, tls_ca=pki["ca"]) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.classify(demo_spec.name, "hello")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_bearer_scheme_is_case_insensitive_and_one_header_only(
    secure_pair: ServicePair, pki: dict[str, str], demo_spec: TaskSpec
) -> None:
    credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    request = inference_pb2.ClassifyRequest(
        task=demo_spec.name, text="a fine film", mode=inference_pb2.MODE_FULL
    )
    async with grpc.aio.secure_channel(secure_pair.inference_address, credentials) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        for scheme in ("bearer", "BEARER", "Bearer", "bEaReR"):  # RFC 7235: the scheme is case-insensitive
            answer = await stub.Classify(
                request, metadata=(("authorization", f"{scheme} {INFERENCE_TOKEN}"),)
            )
            assert answer.label in demo_spec.label_names
        before = REGISTRY.get_sample_value(
            "raee_grpc_rejected_total", {"method": "Classify", "reason": "unauthenticated"}
        )
        for metadata in [
            (("authorization", f"Bearer {INFERENCE_TOKEN}"), ("authorization", "Bearer wrong")),
            (("authorization", "Bearer wrong"), ("authorization", f"Bearer {INFERENCE_TOKEN}")),
            (("authorization", f"Bearer {INFERENCE_TOKEN}"), ("authorization", f"Bearer {INFERENCE_TOKEN}")),
            (("authorization", f"Basic {INFERENCE_TOKEN}"),),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Classify(request, metadata=metadata, timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
        after = REGISTRY.get_sample_value(
            "raee_grpc_rejected_total", {"method": "Classify", "reason": "unauthenticated"}
        )
        assert (after or 0) - (before or 0) == 4


async def test_tokens_are_checked_before_bodies_are_decoded(
    secure_pair: ServicePair, pki: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage bytes from a caller without a token: UNAUTHENTICATED, counted, logged once, no traceback."""
    caplog.set_level(logging.WARNING)
    credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())

    before = requests_counted("ClassifyBatch", "UNAUTHENTICATED")
    async with grpc.aio.secure_channel(secure_pair.inference_address, credentials) as channel:
        raw = channel.unary_unary("/raee.v1.InferenceService/ClassifyBatch")
        for _ in range(20):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await raw(b"\xff\xff\xff", timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert requests_counted("ClassifyBatch", "UNAUTHENTICATED") - before == 20
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    refusals = [r for r in caplog.records if "refused a call" in r.getMessage()]
    assert 1 <= len(refusals) < 20  # logged, rate-limited


async def test_health_stays_open_without_a_token(secure_pair: ServicePair, pki: dict[str, str]) -> None:
    credentials = grpc.ssl_channel_credentials(Path(pki["ca"]).read_bytes())
    async with grpc.aio.secure_channel(secure_pair.inference_address, credentials) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_retrieval_requires_a_client_certificate_from_its_ca(
    secure_pair: ServicePair, pki: dict[str, str]
) -> None:
    metadata = (("authorization", f"Bearer {RETRIEVAL_TOKEN}"),)
    ca = Path(pki["ca"]).read_bytes()
    attempts = {
        "no client certificate": grpc.ssl_channel_credentials(ca),
        "certificate of another CA": grpc.ssl_channel_credentials(
            ca, Path(pki["rogue_key"]).read_bytes(), Path(pki["rogue_cert"]).read_bytes()
        ),
    }
    for why, credentials in attempts.items():
        async with grpc.aio.secure_channel(secure_pair.retrieval_address, credentials) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await retrieval_pb2_grpc.RetrievalServiceStub(channel).ListTasks(
                    retrieval_pb2.ListTasksRequest(), metadata=metadata, timeout=10
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, why
    good = grpc.ssl_channel_credentials(
        ca, Path(pki["client_key"]).read_bytes(), Path(pki["client_cert"]).read_bytes()
    )
    async with grpc.aio.secure_channel(secure_pair.retrieval_address, good) as channel:
        tasks = await retrieval_pb2_grpc.RetrievalServiceStub(channel).ListTasks(
            retrieval_pb2.ListTasksRequest(), metadata=metadata, timeout=10
        )
    assert tasks.tasks


async def test_plaintext_clients_cannot_talk_to_a_tls_port(
    secure_pair: ServicePair, demo_spec: TaskSpec
) -> None:
    async with InferenceClient(secure_pair.inference_address, token=INFERENCE_TOKEN, timeout_s=10) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.classify(demo_spec.name, "hello")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_secrets_never_reach_logs_or_reprs(
    home: Path,
    pki: dict[str, str],
    gemma: Backbone,
    encoder: QueryEncoder,
    demo_spec: TaskSpec,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    retrieval = RetrievalSettings(port=0, metrics_port=0, home=str(home), auth_token=RETRIEVAL_TOKEN)
    inference = InferenceSettings(port=0, metrics_port=0, http_port=-1, auth_token=INFERENCE_TOKEN)
    assert RETRIEVAL_TOKEN not in repr(retrieval)
    assert INFERENCE_TOKEN not in repr(inference)
    pair = await start_pair(retrieval, inference, backbone=gemma, encoder=encoder)
    try:
        async with InferenceClient(pair.inference_address, token="a-wrong-token-9d") as client:
            with pytest.raises(grpc.aio.AioRpcError):
                await client.classify(demo_spec.name, "hello")
    finally:
        await pair.stop()
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "SERVING" in logged  # the services did log
    for secret in (RETRIEVAL_TOKEN, INFERENCE_TOKEN, "a-wrong-token-9d"):
        assert secret not in logged


async def test_unreachable_store_is_unavailable_quickly(encoder: QueryEncoder) -> None:
    config = RetrievalSettings(port=0, metrics_port=0, store_url="http://127.0.0.1:9", auth_token="")
    server = await retrieval_server.start(config, encoder=encoder)
    try:
        async with grpc.aio.insecure_channel(f"localhost:{server.port}") as channel:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await retrieval_pb2_grpc.RetrievalServiceStub(channel).GetTask(
                    retrieval_pb2.GetTaskRequest(task="sst2"), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Qdrant is unreachable" in (caught.value.details() or "")
            assert time.monotonic() - started < 5
    finally:
        await server.stop(0)


def test_qdrant_api_key_is_sent_to_the_server() -> None:
    """A stand-in HTTP server records what qdrant-client sends (no Qdrant server installs here)."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("api-key"))
            body = b'{"result": {"aliases": []}, "status": "ok", "time": 0.0}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = open_store(f"http://127.0.0.1:{server.server_address[1]}", api_key="qdrant-key-51c0")
        assert store.list_tasks() == []
        store.close()
    finally:
        server.shutdown()
    assert seen
    assert seen[-1] == "qdrant-key-51c0"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_metrics_listen_where_configured_over_tls_if_asked(pki: dict[str, str]) -> None:
    plain, secure = _free_port(), _free_port()
    serve_metrics(plain, "127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{plain}/metrics", timeout=10) as reply:
        assert b"raee_grpc_request_seconds" in reply.read()
    settings = RetrievalSettings(
        metrics_host="127.0.0.1", metrics_tls=True, tls_cert=pki["server_cert"], tls_key=pki["server_key"]
    )
    serve_metrics_of(settings, secure)
    context = ssl.create_default_context(cafile=pki["ca"])
    with urllib.request.urlopen(f"https://localhost:{secure}/metrics", timeout=10, context=context) as reply:
        assert b"raee_grpc_rejected_total" in reply.read()
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP to the TLS port: refused
        urllib.request.urlopen(f"http://127.0.0.1:{secure}/metrics", timeout=10).read()
    with pytest.raises(ValueError, match="RAEE_METRICS_TLS needs"):
        serve_metrics_of(RetrievalSettings(metrics_tls=True), _free_port())


def test_a_busy_metrics_port_exits_2_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {
            **os.environ,
            "RAEE_METRICS_HOST": "127.0.0.1",
            "RAEE_RETRIEVAL_METRICS_PORT": str(port),
            "RAEE_RETRIEVAL_PORT": "0",
            "RAEE_HOME": str(tmp_path),
        }
        done = subprocess.run(
            [sys.executable, "-m", "raee_cli.main", "serve", "retrieval"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"error: metrics_port: cannot listen on 127.0.0.1:{port} (Address already in use)"
    )
