from __future__ import annotations

import json
from pathlib import Path

import pytest

from raee.backbone import Backbone
from raee.errors import TaskSpecError
from raee.tasks import Metric, TaskSpec


def spec(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "t",
        "template": "{text} It was",
        "labels": [{"name": "neg", "word": "bad"}, {"name": "pos", "word": "good"}],
    }
    return {**base, **overrides}


def test_valid_spec_formats_text_literally() -> None:
    parsed = TaskSpec.parse(spec())
    assert parsed.format("curly {braces} stay") == "curly {braces} stay It was"
    assert parsed.label_index("pos") == 1
    assert parsed.metric is Metric.ACCURACY


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"template": "no slot here"}, "template: must contain the slot {text} exactly once"),
        ({"template": "{text} and {text}"}, "found 2"),
        ({"labels": [{"name": "only", "word": "one"}]}, "labels: a task needs at least two labels"),
        (
            {"labels": [{"name": "a", "word": "x"}, {"name": "a", "word": "y"}]},
            "duplicate label names ['a']",
        ),
        (
            {"labels": [{"name": "a", "word": "x"}, {"name": "b", "word": "x"}]},
            "duplicate label words ['x']",
        ),
        ({"name": "Bad Name!"}, "name:"),
        ({"metric": "f1"}, "metric:"),
        ({"labels": [{"name": " ", "word": "x"}, {"name": "b", "word": "y"}]}, "must not be blank"),
    ],
)
def test_invalid_specs_name_the_field(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(TaskSpecError, match=None) as caught:
        TaskSpec.parse(spec(**overrides))
    assert message in str(caught.value)


def test_from_file_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "t.yaml"
    yaml_file.write_text(
        "name: t\ntemplate: '{text} It was'\nlabels:\n  - {name: a, word: x}\n  - {name: b, word: y}\n"
    )
    json_file = tmp_path / "t.json"
    labels = [{"name": "a", "word": "x"}, {"name": "b", "word": "y"}]
    document = {"name": "t", "template": "{text}?", "labels": labels, "metric": "matthews_corrcoef"}
    json_file.write_text(json.dumps(document))
    assert TaskSpec.from_file(yaml_file).label_words == ("x", "y")
    assert TaskSpec.from_file(json_file).metric is Metric.MATTHEWS


def test_from_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed")
    with pytest.raises(TaskSpecError, match=r"broken\.yaml: not valid"):
        TaskSpec.from_file(broken)
    with pytest.raises(TaskSpecError, match="cannot read"):
        TaskSpec.from_file(tmp_path / "missing.yaml")


def test_from_flags_defaults_word_to_name() -> None:
    parsed = TaskSpec.from_flags("t", "{text}!", ["no", "yes=sure"])
    assert parsed.label_words == ("no", "sure")


def test_metrics() -> None:
    assert Metric.ACCURACY.score([0, 1, 1, 0], [0, 1, 0, 0]) == 75.0
    assert Metric.MATTHEWS.score([0, 1, 1, 0], [0, 1, 1, 0]) == pytest.approx(100.0)
    assert Metric.MATTHEWS.score([1, 1, 1, 1], [0, 1, 1, 0]) == 0.0


def test_key_text_needs_no_tokenizer() -> None:
    masked = TaskSpec.parse(spec(template="{text} It was {mask} ."))
    assert masked.key_text("fine") == "fine It was _ ."


def test_colliding_label_words_are_rejected_by_the_tokenizer(gemma: Backbone) -> None:
    colliding = TaskSpec.parse(
        spec(labels=[{"name": "a", "word": "xylophone"}, {"name": "b", "word": "xylophonical"}])
    )
    with pytest.raises(TaskSpecError, match="share their first token"):
        gemma.label_token_ids(colliding)


def test_template_kind_must_match_backbone(gemma: Backbone) -> None:
    with pytest.raises(TaskSpecError, match="needs a masked LM"):
        gemma.for_task(TaskSpec.parse(spec(template="{text} It was {mask} .")))
