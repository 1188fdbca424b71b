"""Labelled examples from JSONL, CSV or TSV, validated row by row.

The rows come from a local file, from an S3-compatible object store
(``s3://bucket/key``) or from standard input (``-``), and are read as a stream,
line by line. Every row is checked before anything is written; problems are
reported as ``source:line: reason`` so that they can be fixed in an editor.
"""

from __future__ import annotations

import codecs
import csv
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from raee.tasks import TaskSpec

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
STDIN = "-"
STDIN_NAME = "<stdin>"
S3_SCHEME = "s3://"
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
    path: str | Path  # the source as given: a path, s3://bucket/key, or <stdin>
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class DataError(ValueError):
    """The data has invalid rows (or cannot be read at all)."""

    def __init__(self, errors: list[RowError]) -> None:
        shown = "\n".join(str(e) for e in errors[:MAX_ERRORS_SHOWN])
        more = len(errors) - MAX_ERRORS_SHOWN
        suffix = f"\n... and {more} more" if more > 0 else ""
        super().__init__(f"{len(errors)} invalid row(s):\n{shown}{suffix}")
        self.errors = errors


class _NotUtf8Error(Exception):
    def __init__(self, line: int, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


def read_examples(
    source: str | Path, spec: TaskSpec, *, data_format: str | None = None
) -> tuple[list[Example], list[RowError]]:
    """All valid examples of ``source``, and the errors of the invalid rows.

    ``source`` is a file path, ``s3://bucket/key`` (any S3-compatible store; endpoint
    and credentials from the standard ``AWS_*`` environment variables) or ``-`` for
    standard input. The format comes from the name's suffix, or from ``data_format``
    (``jsonl``, ``csv`` or ``tsv``); standard input is JSONL unless told otherwise.
    """
    label: str | Path = STDIN_NAME if str(source) == STDIN else source
    if isinstance(source, str) and source != STDIN and not source.startswith(S3_SCHEME):
        label = source = Path(source)
    if isinstance(source, str) and source.startswith(S3_SCHEME):
        _s3_location(source)
    name = STDIN_NAME if label == STDIN_NAME else PurePosixPath(str(source)).name
    kind = _format_of(label, name, data_format)
    examples: list[Example] = []
    errors: list[RowError] = []
    try:
        with _open_lines(source) as lines:
            for line, row in _rows(lines, kind, label, errors):
                reason = _check(row, spec)
                if reason:
                    errors.append(RowError(label, line, reason))
                    continue
                text_label = str(row["label"]).strip()
                examples.append(
                    Example(
                        f"{name}:{line}",
                        len(examples),
                        line,
                        str(row["text"]),
                        text_label,
                        spec.label_index(text_label),
                    )
                )
    except OSError as exc:
        raise DataError([RowError(label, 0, f"cannot read: {exc.strerror or exc}")]) from None
    if not examples and not errors:
        errors.append(RowError(label, 0, "no rows"))
    return examples, errors


def _format_of(label: str | Path, name: str, data_format: str | None) -> str:
    if data_format is not None:
        if data_format not in FORMATS.values():
            raise DataError([RowError(label, 0, f"data_format: {data_format!r} is not jsonl, csv or tsv")])
        return data_format
    if label == STDIN_NAME:
        return "jsonl"
    suffix = PurePosixPath(name).suffix
    kind = FORMATS.get(suffix.lower())
    if kind is None:
        raise DataError([RowError(label, 0, f"unknown format {suffix!r}; use .jsonl, .csv or .tsv")])
    return kind


def _open_lines(source: str | Path) -> AbstractContextManager[Iterable[bytes]]:
    """The raw lines of the source, newline included, read as a stream."""
    if isinstance(source, Path):
        return source.open("rb")
    if source == STDIN:
        return nullcontext(sys.stdin.buffer)
    return _s3_lines(source)


@contextmanager
def _s3_lines(uri: str) -> Iterator[Iterable[bytes]]:
    bucket, key = _s3_location(uri)
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - a dependency of the package
        raise DataError([RowError(uri, 0, "reading s3:// needs boto3 (pip install boto3)")]) from None
    try:
        # boto3 reads the standard AWS_ENDPOINT_URL(_S3), AWS_ACCESS_KEY_ID,
        # AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN and AWS_DEFAULT_REGION itself.
        client = boto3.client("s3")
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DataError(
            [RowError(uri, 0, f"cannot read: {error.get('Code', '?')} {error.get('Message', '')}".rstrip())]
        ) from None
    except BotoCoreError as exc:
        raise DataError([RowError(uri, 0, f"cannot read: {exc}")]) from None
    try:
        yield _chunked_lines(body)
    except BotoCoreError as exc:
        raise DataError([RowError(uri, 0, f"cannot read: {exc}")]) from None
    finally:
        body.close()


def _s3_location(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix(S3_SCHEME).partition("/")
    if not bucket or not key:
        raise DataError([RowError(uri, 0, "an S3 URI is s3://bucket/key")])
    return bucket, key


def _chunked_lines(stream: IO[bytes], chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a stream, each with its newline (the last maybe without), read a chunk at a time."""
    pending = b""
    while chunk := stream.read(chunk_bytes):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def _rows(
    lines: Iterable[bytes], kind: str, label: str | Path, errors: list[RowError]
) -> Iterator[tuple[int, dict[str, Any]]]:
    if kind == "jsonl":
        for number, line_bytes in enumerate(lines, start=1):
            if not line_bytes.strip():
                continue
            try:
                row = json.loads(line_bytes.decode("utf-8"))
            except UnicodeDecodeError as exc:
                errors.append(RowError(label, number, f"not UTF-8 ({exc.reason} at byte {exc.start})"))
                continue
            except json.JSONDecodeError as exc:
                errors.append(RowError(label, number, f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(row, dict):
                errors.append(RowError(label, number, "a row must be a JSON object with text and label"))
                continue
            yield number, row
        return
    reader = csv.DictReader(_decoded(lines), delimiter="\t" if kind == "tsv" else ",")
    try:
        missing = {"text", "label"} - set(reader.fieldnames or [])
        if missing:
            errors.append(RowError(label, 1, f"header lacks column(s) {sorted(missing)}"))
            return
        for row in reader:
            extra = row.pop(None, None)
            if extra:
                # "positive,a great, fun movie" would silently lose ", fun movie".
                errors.append(
                    RowError(
                        label,
                        reader.line_num,
                        f"{len(extra)} more field(s) than the header's {len(reader.fieldnames or [])}; "
                        f'quote a text that contains the delimiter ("...")',
                    )
                )
                continue
            yield reader.line_num, row
    except _NotUtf8Error as exc:
        errors.append(RowError(label, exc.line, f"not UTF-8 ({exc.reason})"))
    except csv.Error as exc:
        errors.append(RowError(label, reader.line_num, f"malformed {kind.upper()} ({exc})"))


def _decoded(lines: Iterable[bytes]) -> Iterator[str]:
    """UTF-8 text lines (a leading byte-order mark dropped); :class:`_NotUtf8Error` at the first bad one."""
    for number, line in enumerate(lines, start=1):
        try:
            yield (line.removeprefix(codecs.BOM_UTF8) if number == 1 else line).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _NotUtf8Error(number, exc.reason) from None


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
