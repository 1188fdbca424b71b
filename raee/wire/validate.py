"""Request checks shared by both servicers; each error names the field and never echoes long input."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence, Sized
from typing import Any, TypeVar

from raee.errors import InvalidArgumentError
from raee.tasks import check_task_name

RequestT = TypeVar("RequestT")
ItemT = TypeVar("ItemT")


def require_task(task: str) -> str:
    if not task:
        raise InvalidArgumentError("task", "is required")
    return check_task_name(task)


def require_text(text: str, max_chars: int, field: str = "text") -> str:
    if not text.strip():
        raise InvalidArgumentError(field, "must not be empty")
    if len(text) > max_chars:
        raise InvalidArgumentError(field, f"{len(text)} characters exceed the limit of {max_chars}")
    return text


def require_batch(items: Sized, limit: int, field: str = "requests") -> None:
    if not len(items):
        raise InvalidArgumentError(field, "must not be empty")
    if len(items) > limit:
        raise InvalidArgumentError(field, f"{len(items)} exceed the limit of {limit}")


def check_range(field: str, value: int, low: int, high: int | None = None) -> int:
    """``low <= value <= high`` (no upper bound when ``high`` is None)."""
    if value < low or (high is not None and value > high):
        bounds = f"{low}..{high}" if high is not None else f"at least {low}"
        raise InvalidArgumentError(field, f"{value} is outside {bounds}")
    return value


def validate_each(
    requests: Sequence[RequestT], limit: int, check: Callable[[RequestT], ItemT]
) -> list[ItemT | InvalidArgumentError]:
    """A batch call's items, each validated on its own: an item's error fails that item only."""
    require_batch(requests, limit)
    items: list[ItemT | InvalidArgumentError] = []
    for request in requests:
        try:
            items.append(check(request))
        except InvalidArgumentError as error:
            items.append(error)
    return items


def json_object(body: bytes, field: str = "body") -> dict[str, Any]:
    """A request body that must be one JSON object (the REST endpoints' bodies)."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidArgumentError(field, f"is not valid JSON ({type(error).__name__})") from None
    if not isinstance(value, dict):
        raise InvalidArgumentError(field, "must be a JSON object")
    return value
