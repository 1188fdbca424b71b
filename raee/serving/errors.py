"""Domain errors and the one place where they become gRPC status codes."""

from __future__ import annotations

import asyncio

import grpc

from raee.backbone import InputTooLongError
from raee.store import StoreUnavailableError, TaskNotFoundError
from raee.tasks import InvalidTaskNameError, TaskSpecError


class InvalidArgumentError(ValueError):
    """A request field is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class BackboneMismatchError(RuntimeError):
    """The task was ingested with another backbone than the one this worker serves."""


class OverloadedError(RuntimeError):
    """The server's queue is full; the client should back off and retry."""


class UpstreamUnavailableError(RuntimeError):
    """A service this one depends on cannot answer."""


class StatusError(RuntimeError):
    """An error that already carries its status, e.g. a per-item error relayed from another service."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_code_value(cls, value: int, message: str) -> StatusError:
        codes = {code.value[0]: code for code in grpc.StatusCode}
        return cls(codes.get(value, grpc.StatusCode.UNKNOWN), message)


_STATUS: list[tuple[type[BaseException], grpc.StatusCode]] = [
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (InputTooLongError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidTaskNameError, grpc.StatusCode.INVALID_ARGUMENT),
    (TaskNotFoundError, grpc.StatusCode.NOT_FOUND),
    (BackboneMismatchError, grpc.StatusCode.FAILED_PRECONDITION),
    (TaskSpecError, grpc.StatusCode.FAILED_PRECONDITION),
    (OverloadedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (StoreUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (UpstreamUnavailableError, grpc.StatusCode.UNAVAILABLE),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message of an exception.

    Unknown exceptions are INTERNAL with a generic message: their details go to
    the log, not to the client.
    """
    if isinstance(error, StatusError):
        return error.code, str(error)
    for kind, code in _STATUS:
        if isinstance(error, kind):
            if isinstance(error, InputTooLongError):
                return code, f"text: {error}"
            return code, str(error) or kind.__name__
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"
