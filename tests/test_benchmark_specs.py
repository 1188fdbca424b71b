"""The shipped benchmark task specs: valid, distinct first tokens, labels as the data has them."""

from __future__ import annotations

from pathlib import Path

import pytest

from raee.backbone import Backbone
from raee.data import read_examples
from raee.tasks import TaskSpec

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "evaluation" / "tasks").glob("*/*.yaml"))
DATA = ROOT / "benchmarks" / "data"


def test_both_families_cover_the_six_tasks() -> None:
    names = {(p.parent.name, p.stem) for p in SPECS}
    tasks = {"sst2", "sst5", "mr", "cr", "trec", "cola"}
    assert names == {(family, task) for family in ("paper", "cloze") for task in tasks}


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_spec_is_usable_with_gemma(path: Path, gemma: Backbone) -> None:
    spec = TaskSpec.from_file(path)
    assert spec.name == f"{path.stem}-{path.parent.name}"
    ids = gemma.label_token_ids(spec)  # raises on colliding first tokens
    assert len(set(ids)) == spec.num_labels
    gemma.for_task(spec)


@pytest.mark.parametrize("path", SPECS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_spec_labels_are_the_data_labels(path: Path) -> None:
    spec = TaskSpec.from_file(path)
    for split in ("train", "test"):
        examples, errors = read_examples(DATA / path.stem / f"{split}.jsonl", spec)
        assert errors == []
        assert {e.label for e in examples} == set(spec.label_names)
