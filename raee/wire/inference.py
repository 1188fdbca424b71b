"""The ``raee.v1.InferenceService`` API: classify requests and answers, and their protos."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from raee.errors import InvalidArgumentError
from raee.exit_rule import Fallback
from raee.v1 import inference_pb2
from raee.wire import common
from raee.wire.retrieval import FALLBACK_TO_WIRE
from raee.wire.validate import check_range, require_task, require_text, validate_each


class Mode(Enum):
    RAEE = "raee"
    FULL = "full"
    FIXED = "fixed"


MODE_TO_WIRE: dict[Mode, inference_pb2.Mode.ValueType] = {
    Mode.RAEE: inference_pb2.MODE_RAEE,
    Mode.FULL: inference_pb2.MODE_FULL,
    Mode.FIXED: inference_pb2.MODE_FIXED,
}
MODE_FROM_WIRE = {wire: mode for mode, wire in MODE_TO_WIRE.items()} | {
    inference_pb2.MODE_UNSPECIFIED: Mode.RAEE
}


@dataclass(frozen=True)
class WorkItem:
    """One validated classify request."""

    task: str
    text: str
    mode: Mode
    layer: int | None = None
    k: int | None = None
    include_distribution: bool = False


@dataclass
class Outcome:
    """The worker's answer to one item."""

    label: str
    label_index: int
    probabilities: list[float]
    exit_layer: int
    num_layers: int
    retrieval_ms: float = 0.0
    forward_ms: float = 0.0
    degraded: bool = False
    degraded_reason: str = ""
    fallback: Fallback = Fallback.NONE
    distribution: list[float] = field(default_factory=list)
    task_version: str = ""
    batch_group_size: int = 1


# -- service side -----------------------------------------------------------------------


def work_item(request: inference_pb2.ClassifyRequest, max_text_chars: int) -> WorkItem:
    """Validate a request; every error names the offending field."""
    task = require_task(request.task)
    text = require_text(request.text, max_text_chars)
    mode = MODE_FROM_WIRE.get(request.mode)
    if mode is None:
        raise InvalidArgumentError("mode", f"unknown mode {request.mode}")
    layer = check_range("layer", request.layer, 0) if request.HasField("layer") else None
    if layer is not None and mode is not Mode.FIXED:
        raise InvalidArgumentError("layer", "is only valid with MODE_FIXED")
    if layer is None and mode is Mode.FIXED:
        raise InvalidArgumentError("layer", "is required with MODE_FIXED")
    k = check_range("k", request.k, 1) if request.HasField("k") else None
    return WorkItem(task, text, mode, layer, k, request.include_distribution)


def work_items(
    request: inference_pb2.ClassifyBatchRequest, max_text_chars: int, max_items: int
) -> list[WorkItem | InvalidArgumentError]:
    """Each item's work, or that item's own validation error."""
    return validate_each(request.requests, max_items, lambda item: work_item(item, max_text_chars))


def classify_response(outcome: Outcome) -> inference_pb2.ClassifyResponse:
    return inference_pb2.ClassifyResponse(
        label=outcome.label,
        label_index=outcome.label_index,
        probabilities=outcome.probabilities,
        exit_layer=outcome.exit_layer,
        num_layers=outcome.num_layers,
        retrieval_ms=outcome.retrieval_ms,
        forward_ms=outcome.forward_ms,
        degraded=outcome.degraded,
        degraded_reason=outcome.degraded_reason,
        fallback=FALLBACK_TO_WIRE[outcome.fallback],
        distribution=outcome.distribution,
        task_version=outcome.task_version,
        batch_group_size=outcome.batch_group_size,
    )


def classify_result(outcome: Outcome | BaseException) -> inference_pb2.ClassifyResult:
    if isinstance(outcome, BaseException):
        return inference_pb2.ClassifyResult(error=common.error(outcome))
    return inference_pb2.ClassifyResult(response=classify_response(outcome))


# -- client side ------------------------------------------------------------------------


def classify_request(
    task: str, text: str, mode: Mode | str = Mode.RAEE, layer: int | None = None, k: int | None = None
) -> inference_pb2.ClassifyRequest:
    try:
        chosen = Mode(mode)
    except ValueError:
        raise InvalidArgumentError("mode", f"{mode!r} is not one of {[m.value for m in Mode]}") from None
    return inference_pb2.ClassifyRequest(task=task, text=text, mode=MODE_TO_WIRE[chosen], layer=layer, k=k)
