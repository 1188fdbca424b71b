"""Labelled examples from JSONL, CSV or TSV files, validated row by row.

Every row is checked before anything is written; problems are reported as
``file:line: reason`` so that they can be fixed in an editor.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raee.tasks import TaskSpec

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
MAX_ERRORS_SHOWN = 20


@dataclass(frozen=True)
class Example:
    example_id: str  # "<file name>:<line>", stable for the same file
    index: int  # 0-based position among the file's valid rows: the point id
    line: int
    text: str
    label: str
    label_index: int


@dataclass(frozen=True)
class RowError:
    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(ValueError):
    """The data file has invalid rows (or cannot be read at all)."""

    def __init__(self, errors: list[RowError]) -> None:
        shown = "\n".join(str(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        suffix = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(errors)} invalid row(s):\n{shown}{suffix}")
        self.errors = errors


def read_examples(path: str | Path, spec: TaskSpec) -> tuple[list[Example], list[RowError]]:
    """All valid examples of the file, and the errors of the invalid rows."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError([RowError(path, 0, f"unknown format {path.suffix!r}; use .jsonl, .csv or .tsv")])
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError([RowError(path, 0, f"cannot read: {exc.strerror}")]) from None
    examples: list[Example] = []
    errors: list[RowError] = []
    for line, row in _rows(raw, kind, path, errors):
        reason = _check(row, spec)
        if reason:
            errors.append(RowError(path, line, reason))
            continue
        label = str(row["label"]).strip()
        examples.append(
            Example(
                f"{path.name}:{line}", len(examples), line, str(row["text"]), label, spec.label_index(label)
            )
        )
    if not examples and not errors:
        errors.append(RowError(path, 0, "no rows"))
    return examples, errors


def _rows(raw: bytes, kind: str, path: Path, errors: list[RowError]) -> Iterator[tuple[int, dict[str, Any]]]:
    if kind == "jsonl":
        for number, line_bytes in enumerate(raw.splitlines(), start=1):
            if not line_bytes.strip():
                continue
            try:
                row = json.loads(line_bytes.decode("utf-8"))
            except UnicodeDecodeError as exc:
                errors.append(RowError(path, number, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            except json.JSONDecodeError as exc:
                errors.append(RowError(path, number, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict):
                errors.append(RowError(path, number, "a row must be a JSON object with text and label"))
                continue
            yield number, row
        return
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        errors.append(RowError(path, line, f"not UTF-8 ({exc.reason})"))
        return
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
    missing = {"text", "label"} - set(reader.fieldnames or [])
    if missing:
        errors.append(RowError(path, 1, f"header lacks column(s) {sorted(missing)}"))
        return
    try:
        for row in reader:
            extra = row.pop(None, None)
            if extra:
                # "positive,a great, fun movie" would silently lose ", fun movie".
                errors.append(
                    RowError(
                        path,
                        reader.line_num,
                        f"{len(extra)} more field(s) than the header's {len(reader.fieldnames or [])}; "
                        f'quote a text that contains the delimiter ("...")',
                    )
                )
                continue
            yield reader.line_num, row
    except csv.Error as exc:
        errors.append(RowError(path, reader.line_num, f"malformed {kind.upper()} ({exc})"))


def _check(row: dict[str, Any], spec: TaskSpec) -> str | None:
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str):
        return "missing text" if text is None else f"text must be a string, not {type(text).__name__}"
    if not text.strip():
        return "text is empty"
    if "\x00" in text:
        return "text contains a NUL character"
    if label is None or (isinstance(label, str) and not label.strip()):
        return "missing label"
    if not isinstance(label, str):
        return f"label must be a string, not {type(label).__name__}"
    if label.strip() not in spec.label_names:
        return f"unknown label {label.strip()!r}; expected one of {list(spec.label_names)}"
    return None
