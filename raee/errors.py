"""The domain errors of RAEE serve, in one light module (no torch, no gRPC).

Code anywhere raises these; ``raee.serving.errors`` is the one place where they
become gRPC status codes, and the CLI turns the user's errors into exit status 2.
Every message names the field or the object at fault and never echoes unbounded
input.
"""

from __future__ import annotations


class TaskSpecError(ValueError):
    """A task spec is malformed; the message names the offending field."""


class InvalidArgumentError(ValueError):
    """A request field is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidTaskNameError(InvalidArgumentError):
    """A task name that cannot name a task (also a folder and a collection name).

    An invalid argument like any other: a batch reports it per item.
    """

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.field = "task"


class InputTooLongError(InvalidArgumentError):
    """A formatted prompt exceeds the backbone's token budget."""

    def __init__(self, index: int, length: int, limit: int) -> None:
        super().__init__("text", f"text {index}: prompt is {length} tokens, more than the limit of {limit}")
        self.index = index
        self.length = length
        self.limit = limit


class TaskNotFoundError(LookupError):
    """No published version of this task exists."""

    def __init__(self, task: str) -> None:
        super().__init__(f"task {task!r} has no published version; ingest it first")
        self.task = task


class VersionNotFoundError(TaskNotFoundError):
    """A request named a task version that is not the one published now."""

    def __init__(self, task: str, version: str, current: str) -> None:
        LookupError.__init__(self, f"version: task {task!r} serves version {current}, not {version[:64]!r}")
        self.task = task


class StoreError(RuntimeError):
    """The store refused an operation (a concurrent writer, a corrupt manifest, ...)."""


class StoreUnavailableError(StoreError):
    """The store cannot be reached right now; retrying later may succeed."""


class BackboneLoadError(RuntimeError):
    """The backbone could not be found or loaded."""


class BackboneMismatchError(RuntimeError):
    """The task was ingested with another backbone than the one this worker serves."""


class EncoderLoadError(RuntimeError):
    """The query encoder cannot be loaded or exported (a damaged, unwritable ONNX cache)."""


class EncoderMismatchError(RuntimeError):
    """The task was ingested with another query encoder than the one this service runs."""


class OverloadedError(RuntimeError):
    """The server's queue is full; the client should back off and retry."""


class UpstreamUnavailableError(RuntimeError):
    """A service this one depends on cannot answer; ``reason`` is a short machine-readable cause."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class RemoteError(RuntimeError):
    """An error another service already answered with, relayed as is (e.g. a per-item batch error).

    ``code`` is the numeric gRPC status code the other service sent.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
