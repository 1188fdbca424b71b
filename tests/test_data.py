from __future__ import annotations

from pathlib import Path

import pytest

from raee.data import DataError, read_examples
from raee.tasks import TaskSpec

SPEC = TaskSpec.from_flags("t", "{text} It was", ["negative=terrible", "positive=great"])


def test_jsonl_rows_become_examples(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "good", "label": "positive"}\n\n{"text": "bad", "label": "negative"}\n')
    examples, errors = read_examples(path, SPEC)
    assert errors == []
    assert [(e.example_id, e.text, e.label_index) for e in examples] == [
        ("train.jsonl:1", "good", 1),
        ("train.jsonl:3", "bad", 0),
    ]


def test_every_bad_row_is_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "fine", "label": "positive"}\n'
        b'{"text": "x", "label": "neutral"}\n'
        b"not json\n"
        b'{"label": "positive"}\n'
        b'{"text": "", "label": "positive"}\n'
        b'{"text": "caf\xe9", "label": "positive"}\n'
        b'["a", "list"]\n'
        b'{"text": "no label"}\n'
        b'{"text": 5, "label": "positive"}\n'
    )
    examples, errors = read_examples(path, SPEC)
    assert len(examples) == 1
    messages = [str(e) for e in errors]
    assert messages == [
        f"{path}:2: unknown label 'neutral'; expected one of ['negative', 'positive']",
        f"{path}:3: not valid JSON (Expecting value)",
        f"{path}:4: missing text",
        f"{path}:5: text is empty",
        f"{path}:6: not UTF-8 (invalid continuation byte at byte 13)",
        f"{path}:7: a row must be a JSON object with text and label",
        f"{path}:8: missing label",
        f"{path}:9: text must be a string, not int",
    ]


def test_csv_and_tsv(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text('text,label\n"good, really",positive\nbad,negative\nmeh,unknown\n')
    examples, errors = read_examples(csv_path, SPEC)
    assert [e.text for e in examples] == ["good, really", "bad"]
    assert [str(e) for e in errors] == [
        f"{csv_path}:4: unknown label 'unknown'; expected one of ['negative', 'positive']"
    ]
    tsv_path = tmp_path / "d.tsv"
    tsv_path.write_text("label\ttext\npositive\tgood\n")
    assert [e.label for e in read_examples(tsv_path, SPEC)[0]] == ["positive"]


def test_unreadable_inputs(tmp_path: Path) -> None:
    headerless = tmp_path / "h.csv"
    headerless.write_text("a,b\n1,2\n")
    assert "header lacks column(s) ['label', 'text']" in str(read_examples(headerless, SPEC)[1][0])
    with pytest.raises(DataError, match="unknown format"):
        read_examples(tmp_path / "x.parquet", SPEC)
    with pytest.raises(DataError, match="cannot read"):
        read_examples(tmp_path / "missing.jsonl", SPEC)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "no rows" in str(read_examples(empty, SPEC)[1][0])


def test_csv_rows_with_extra_fields_are_refused_not_truncated(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('label,text\npositive,a great, fun movie\nnegative,"dull, slow"\n')
    examples, errors = read_examples(path, SPEC)
    assert [(e.text, e.label) for e in examples] == [("dull, slow", "negative")]
    assert [str(e) for e in errors] == [
        f'{path}:2: 1 more field(s) than the header\'s 2; quote a text that contains the delimiter ("...")'
    ]
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\ngood\tpositive\textra\n")
    _, errors = read_examples(tsv, SPEC)
    assert [e.line for e in errors] == [2]
