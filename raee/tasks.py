"""Task specs: a prompt template, ordered labels with their label words, a metric.

A spec is loaded from YAML or JSON::

    name: sst2
    template: "{text} It was"
    labels:
      - {name: negative, word: terrible}
      - {name: positive, word: great}
    metric: accuracy

or built from command-line flags with :meth:`TaskSpec.from_flags`. Masked-LM
templates mark the prediction position with ``{mask}``; causal-LM templates
predict the token after the prompt and must not contain it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raee.errors import InvalidTaskNameError, TaskSpecError

TEXT_SLOT = "{text}"
MASK_SLOT = "{mask}"
TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def check_task_name(task: str) -> str:
    if not re.fullmatch(TASK_NAME_PATTERN, task):
        shown = repr(task[:64]) + ("..." if len(task) > 64 else "")  # never echo unbounded input
        raise InvalidTaskNameError(f"task: {shown} is not a valid task name ({TASK_NAME_PATTERN})")
    return task


class Metric(StrEnum):
    ACCURACY = "accuracy"
    MATTHEWS = "matthews_corrcoef"

    def score(self, predictions: Sequence[int] | np.ndarray, gold: Sequence[int] | np.ndarray) -> float:
        """The metric in percent (Matthews correlation x 100 for ``matthews_corrcoef``)."""
        if len(predictions) == 0:
            raise ValueError("cannot score an empty set of predictions")
        from sklearn.metrics import accuracy_score, matthews_corrcoef  # heavy: only when scoring

        if self is Metric.ACCURACY:
            return 100.0 * float(accuracy_score(gold, predictions))
        return 100.0 * float(matthews_corrcoef(gold, predictions))


class Label(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="the label as it appears in the data")
    word: str = Field(min_length=1, description="the word the backbone should predict")

    @field_validator("name", "word")
    @classmethod
    def _strip(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped:
            raise ValueError("must not be blank")
        return stripped


class TaskSpec(BaseModel):
    """What a task is: template, labels (in order) and metric."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=TASK_NAME_PATTERN)
    template: str
    labels: tuple[Label, ...]
    metric: Metric = Metric.ACCURACY

    @field_validator("template")
    @classmethod
    def _template_has_one_text_slot(cls, template: str) -> str:
        count = template.count(TEXT_SLOT)
        if count != 1:
            raise ValueError(f"must contain the slot {TEXT_SLOT} exactly once (found {count})")
        if template.count(MASK_SLOT) > 1:
            raise ValueError(f"may contain the slot {MASK_SLOT} at most once")
        return template

    @field_validator("labels")
    @classmethod
    def _at_least_two(cls, labels: tuple[Label, ...]) -> tuple[Label, ...]:
        if len(labels) < 2:
            raise ValueError(f"a task needs at least two labels (got {len(labels)})")
        return labels

    @model_validator(mode="after")
    def _unique_labels(self) -> TaskSpec:
        for attribute in ("name", "word"):
            values = [getattr(label, attribute) for label in self.labels]
            duplicates = sorted({v for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"labels: duplicate label {attribute}s {duplicates}")
        return self

    # -- construction -------------------------------------------------------------------

    @classmethod
    def parse(cls, data: Any, *, source: str = "task spec") -> TaskSpec:
        """Validate a mapping, turning pydantic's errors into one readable message."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise TaskSpecError(f"{source}: {_describe(exc)}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> TaskSpec:
        """Load a spec from a ``.yaml``/``.yml`` or ``.json`` file."""
        path = Path(path)
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaskSpecError(f"{path}: cannot read task spec ({exc.strerror})") from None
        try:
            data = json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise TaskSpecError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from None
        if not isinstance(data, dict):
            raise TaskSpecError(f"{path}: a task spec must be a mapping")
        return cls.parse(data, source=str(path))

    @classmethod
    def from_flags(
        cls, name: str, template: str, labels: Sequence[str], metric: str = "accuracy"
    ) -> TaskSpec:
        """Build a spec from flags; each label is ``NAME=WORD`` (or ``NAME``, the word being the name)."""
        parsed = []
        for item in labels:
            label_name, _, word = item.partition("=")
            parsed.append({"name": label_name, "word": word or label_name})
        return cls.parse(
            {"name": name, "template": template, "labels": parsed, "metric": metric},
            source="task flags",
        )

    # -- use ----------------------------------------------------------------------------

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def label_words(self) -> tuple[str, ...]:
        return tuple(label.word for label in self.labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def uses_mask(self) -> bool:
        return MASK_SLOT in self.template

    def label_index(self, name: str) -> int:
        """Index of a label name; ``KeyError`` naming the known labels if it is not one."""
        try:
            return self.label_names.index(name)
        except ValueError:
            raise KeyError(f"unknown label {name!r}; expected one of {list(self.label_names)}") from None

    def format(self, text: str, mask_token: str | None = None) -> str:
        """The prompt for one text (``str.replace``, so braces in the text are safe)."""
        if not self.uses_mask:
            return self.template.replace(TEXT_SLOT, text, 1)
        if mask_token is None:
            raise TaskSpecError(
                f"task {self.name}: template has {MASK_SLOT} but the backbone has no mask token"
            )
        # Split around the template's own slots so that braces inside the text stay literal.
        before, _, after = self.template.partition(MASK_SLOT)
        return before.replace(TEXT_SLOT, text, 1) + mask_token + after.replace(TEXT_SLOT, text, 1)

    def key_text(self, text: str) -> str:
        """The text the query encoder embeds: the prompt, as the authors key their index.

        It depends on the spec alone (not on a tokenizer's mask token), so the
        retrieval service, which has no backbone, builds exactly the ingest's keys.
        """
        return self.format(text, mask_token="_") if self.uses_mask else self.format(text)

    def score(self, predictions: Sequence[int] | np.ndarray, gold: Sequence[int] | np.ndarray) -> float:
        return self.metric.score(list(predictions), list(gold))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}")
    return "; ".join(parts)
