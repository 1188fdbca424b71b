"""The worker's REST API in JSON: ``POST /v1/classify``, and status codes for errors.

``{"task": "sst2", "texts": ["..."], "mode": "raee"|"full"|"fixed", "layer": 6, "k": 12}``
answers ``{"results": [{"label", "probabilities", "exit_layer", "degraded"}, ...]}``,
one result per text, in order; the first invalid text fails the call (400, naming
``texts[i]``). Errors are ``{"error": message}`` with the HTTP status that
grpc-gateway gives the same gRPC status.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from raee.errors import InvalidArgumentError
from raee.serving.errors import status_of
from raee.wire.inference import Outcome, WorkItem
from raee.wire.oip import infer_call
from raee.wire.validate import json_object

# grpc-gateway's mapping (runtime/errors.go HTTPStatusFromCode).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}


def http_error(error: BaseException) -> tuple[int, dict[str, str]]:
    """The HTTP status and ``{"error": message}`` body of an exception (as gRPC would map it)."""
    code, message = status_of(error)
    return HTTP_STATUS.get(code, 500), {"error": message}


def classify_items(body: bytes, *, max_text_chars: int, max_items: int) -> list[WorkItem]:
    """Validate a ``/v1/classify`` body into work items; every error names its field."""
    request = json_object(body)
    unknown = [key for key in request if key not in ("task", "texts", "mode", "layer", "k")]
    if unknown:
        raise InvalidArgumentError(
            str(unknown[0])[:40], "unknown field; known are task, texts, mode, layer, k"
        )
    task = request.get("task")
    if not isinstance(task, str):
        raise InvalidArgumentError("task", "must be a string")
    texts = request.get("texts")
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise InvalidArgumentError("texts", "must be a list of strings")
    parameters = {key: request[key] for key in ("mode", "layer", "k") if request.get(key) is not None}
    try:
        call = infer_call(
            task, "", "", texts, parameters, [], max_text_chars=max_text_chars, max_items=max_items
        )
    except InvalidArgumentError as error:
        field = error.field.replace("inputs.text", "texts").replace("parameters.", "")
        raise InvalidArgumentError(
            "task" if field == "model_name" else field, str(error).split(": ", 1)[-1]
        ) from None
    return call.items


def classify_json(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "results": [
            {
                "label": o.label,
                "probabilities": o.probabilities,
                "exit_layer": o.exit_layer,
                "degraded": o.degraded,
            }
            for o in outcomes
        ]
    }
