"""The one place where domain errors become gRPC status codes.

It imports only the light ``raee.errors`` (no torch, no store backend), so any
process can map errors without loading a model.
"""

from __future__ import annotations

import asyncio

import grpc

from raee.errors import (
    BackboneMismatchError,
    EncoderMismatchError,
    InvalidArgumentError,
    InvalidTaskNameError,
    OverloadedError,
    RemoteError,
    StoreError,
    StoreUnavailableError,
    TaskNotFoundError,
    TaskSpecError,
    UpstreamUnavailableError,
)

# Order matters: the first matching class wins (subclasses before their bases).
_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidTaskNameError, grpc.StatusCode.INVALID_ARGUMENT),
    (TaskNotFoundError, grpc.StatusCode.NOT_FOUND),
    (BackboneMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (EncoderMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (TaskSpecError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UpstreamUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of an exception.

    Unknown exceptions are INTERNAL with a generic message: their details go to
    the log, not to the client.
    """
    if isinstance(error, RemoteError):
        return _CODES.get(error.code, grpc.StatusCode.UNKNOWN), str(error)
    for kind, code in _STATUS:
        if isinstance(error, kind):
            return code, str(error) or kind.__name__
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def status_code_value(code: grpc.StatusCode) -> int:
    """The numeric value of a status code, as sent in per-item ``common.v1.Error`` messages."""
    value: int = code.value[0]
    return value


def code_name(value: int) -> str:
    """``"unavailable"`` for 14: the lower-case name of a numeric status code."""
    code = _CODES.get(value)
    return code.name.lower() if code is not None else f"code_{value}"
