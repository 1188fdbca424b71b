"""The service's exits equal a separate, plain implementation of the paper's rule over exact search.

What the plain side shares with the service: the two models (Gemma's weights and
tokenizer, the MiniLM encoder) and the constants of the method (k = 12, the 1e-6
distance floor, the 0.9 confidence threshold and the top-3 fallback of
docs/method.md §3). Everything else it computes afresh: every exit list from the
Hugging Face forward pass (tests/reference.py, no project probing code), every key
from the prompt written out with str.replace, the search by brute-force squared L2
in numpy, and the rule in a few lines.
"""

from __future__ import annotations

import grpc
import numpy as np

from raee.backbone import Backbone
from raee.data import read_examples
from raee.encoder import QueryEncoder
from raee.tasks import TaskSpec
from raee.v1 import retrieval_pb2, retrieval_pb2_grpc
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair
from tests import reference
from tests.conftest import DEMO_TEST_TEXTS

QUERIES = [
    *DEMO_TEST_TEXTS,
    "i would not recommend this to anyone .",
    "what a wonderful surprise this was .",
    "the plot is thin but the actors are charming .",
    "utterly forgettable .",
    "the best thing i bought this year .",
    "it broke after one use .",
    "a masterpiece of quiet, patient filmmaking .",
    "the jokes never land .",
]


def prompt(spec: TaskSpec, text: str) -> str:
    """The causal-LM prompt: the key the authors index, and what the backbone reads."""
    return spec.template.replace("{text}", text, 1)


def plain_rule(
    keys: np.ndarray, exits: list[list[tuple[int, float]]], query: np.ndarray, num_layers: int, k: int = 12
) -> int:
    distances = ((keys - query) ** 2).sum(axis=1)
    nearest = np.argsort(distances, kind="stable")[:k]
    d = np.maximum(distances[nearest], 1e-6)
    score = np.zeros(num_layers + 1)
    for weight, i in zip(d.min() / d, nearest, strict=True):
        confident = [(layer, p) for layer, p in exits[i] if p >= 0.9]
        for layer, p in confident or sorted(exits[i], key=lambda pair: -pair[1])[:3]:
            score[layer] += weight * p
    return int(np.argmax(score)) if score.sum() > 0 else num_layers


async def test_service_exits_equal_the_plain_rule(
    pair: ServicePair, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    examples, _ = read_examples(DEMO_DIR / "train.jsonl", demo_spec)
    train_texts = [e.text for e in examples]
    words = [label.word for label in demo_spec.labels]
    probabilities = [
        reference.exit_probabilities(gemma.model, gemma.tokenizer, prompt(demo_spec, text), words)[0].numpy()
        for text in train_texts
    ]
    exits = [
        [
            (layer, float(p[layer].max()))
            for layer in range(gemma.num_layers + 1)
            if p[layer].argmax() == e.label_index
        ]
        for p, e in zip(probabilities, examples, strict=True)
    ]
    keys = encoder.encode([prompt(demo_spec, t) for t in train_texts]).astype(np.float64)
    queries = QUERIES + train_texts[:16]  # stored texts too: the zero-distance guard at work
    query_keys = encoder.encode([prompt(demo_spec, t) for t in queries]).astype(np.float64)
    expected = [plain_rule(keys, exits, q, gemma.num_layers) for q in query_keys]

    async with grpc.aio.insecure_channel(pair.retrieval_address) as channel:
        stub = retrieval_pb2_grpc.RetrievalServiceStub(channel)
        request = retrieval_pb2.BatchExitDistributionRequest(
            requests=[retrieval_pb2.ExitDistributionRequest(task=demo_spec.name, text=t) for t in queries]
        )
        response = await stub.BatchGetExitDistribution(request, timeout=60)
    served = [r.response.exit_layer for r in response.results]
    agreement = np.mean(np.array(served) == np.array(expected))
    assert agreement >= 0.99, list(zip(queries, served, expected, strict=True))
    assert len(set(expected)) > 1, "the queries exercise more than one exit"
