"""Transport security and authentication for both services.

* TLS: a server certificate and key make the port TLS-only; a client CA on top
  makes it mutual TLS (clients must present a certificate signed by that CA). The
  inference worker reaches the retrieval service the same way, with its own
  client certificate.
* Bearer tokens: with a token configured, every call must carry exactly one
  ``authorization: Bearer <token>`` header (the scheme in any case) or is refused
  with UNAUTHENTICATED, except the health service, which probes use without
  credentials.

Tokens and keys never reach the logs: the settings hold them as ``SecretStr``.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from raee.serving.interceptors import REFUSALS_LOG, method_name, safe_deserializer
from raee.serving.metrics import REJECTED, REQUEST_SECONDS
from raee.settings import ServiceSettings

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)


@dataclass(frozen=True)
class ServerSecurity:
    """TLS files and bearer token of a server (empty strings: off)."""

    auth_token: str = field(default="", repr=False)
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""

    @classmethod
    def of(cls, settings: ServiceSettings) -> ServerSecurity:
        return cls(
            settings.auth_token.get_secret_value(),
            settings.tls_cert,
            settings.tls_key,
            settings.tls_client_ca,
        )


class BearerTokenInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls without exactly one valid ``authorization: Bearer <token>`` header.

    The scheme is case-insensitive (RFC 7235 section 2.1). Two or more
    ``authorization`` headers are refused as ambiguous, whatever they hold. The
    check runs before the request body is decoded, so an unauthenticated caller
    gets UNAUTHENTICATED even with garbage bytes. Refusals are counted
    (``raee_grpc_rejected_total``, ``raee_grpc_request_seconds``) and logged at
    most once per 10 s.
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("auth_token: must not be empty")
        self._expected = token.encode()

    def check(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
        """``None`` when the metadata authenticates the call, else the reason it does not."""
        values = [value for key, value in metadata or () if key.lower() == "authorization"]
        if not values:
            return "missing"
        if len(values) > 1:
            return "ambiguous"
        value = values[0]
        if not isinstance(value, str):
            return "malformed"
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() != "bearer":
            return "malformed"
        if not hmac.compare_digest(credentials.strip().encode(), self._expected):
            return "wrong"
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        reason = self.check(details.invocation_metadata)
        if reason is None:
            return handler
        method = method_name(details)
        REJECTED.labels(method, "unauthenticated").inc()
        REFUSALS_LOG.warning(
            f"unauthenticated:{method}", "%s: refused a call with a %s token", method, reason
        )
        message = (
            "exactly one 'authorization' header is allowed"
            if reason == "ambiguous"
            else "a valid 'authorization: Bearer <token>' header is required"
        )
        return _refusing(handler, method, message)


def _refusing(handler: grpc.RpcMethodHandler, method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED (and counts it)."""

    async def refuse(_request: Any, context: aio.ServicerContext) -> None:
        REQUEST_SECONDS.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).observe(0.0)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return make(
        refuse,
        request_deserializer=safe_deserializer(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials | None:
    """TLS credentials for a server port; ``None`` (plaintext) when no certificate is configured."""
    if not cert and not key:
        if client_ca:
            raise ValueError("tls_client_ca: mutual TLS also needs tls_cert and tls_key")
        return None
    if not (cert and key):
        raise ValueError("tls_cert and tls_key: give both or neither")
    return grpc.ssl_server_credentials(
        [(_read(key, "tls_key"), _read(cert, "tls_cert"))],
        root_certificates=_read(client_ca, "tls_client_ca") if client_ca else None,
        require_client_auth=bool(client_ca),
    )


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials | None:
    """TLS credentials for a client channel (``None``: plaintext); cert and key for mutual TLS."""
    if not ca:
        if cert or key:
            raise ValueError("a client certificate needs the server's CA too")
        return None
    if bool(cert) != bool(key):
        raise ValueError("client certificate and key: give both or neither")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA"),
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...] | None:
    return (("authorization", f"Bearer {token}"),) if token else None


def open_channel(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, Any]],
    interceptors: list[Any] | None = None,
) -> aio.Channel:
    if credentials is None:
        return aio.insecure_channel(target, options=options, interceptors=interceptors)
    return aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{what}: cannot read {path} ({exc.strerror})") from None
