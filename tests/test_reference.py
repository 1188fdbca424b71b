"""The project's exit probabilities on the real Gemma equal an independent reference (tests/reference.py).

A wrong prediction position, a missing final norm, a wrong label token or a
mis-numbered exit would each break this test; every other backbone test compares
the project's probing code with itself.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raee.backbone import Backbone
from raee.tasks import TaskSpec
from tests import reference

TEXTS = [
    "a gorgeous , witty , seductive movie .",
    "the film is a mess , and a long one .",
    "it 's not the worst thing i 've seen , but close",
]
TEMPLATE = "{text} It was"
WORDS = ["terrible", "great"]


@pytest.fixture(scope="module")
def spec() -> TaskSpec:
    return TaskSpec.from_flags("reference", TEMPLATE, [f"negative={WORDS[0]}", f"positive={WORDS[1]}"])


def test_label_tokens_are_the_words_first_sub_tokens(gemma: Backbone, spec: TaskSpec) -> None:
    assert gemma.label_token_ids(spec) == reference.label_token_ids(gemma.tokenizer, WORDS)


@pytest.mark.parametrize("text", TEXTS)
def test_exit_probabilities_equal_the_hugging_face_forward(
    gemma: Backbone, spec: TaskSpec, text: str
) -> None:
    ours = gemma.for_task(spec).exit_probabilities([text])[0]
    prompt = TEMPLATE.replace("{text}", text)
    per_exit, head = reference.exit_probabilities(gemma.model, gemma.tokenizer, prompt, WORDS)
    assert ours.shape == (gemma.num_layers + 1, 2) == tuple(per_exit.shape)
    # The last exit: the model's own logits (its final norm and LM head), nothing of ours.
    np.testing.assert_allclose(ours[gemma.num_layers], head.numpy(), atol=1e-4)
    for exit_layer in (0, 1, 9, 17, gemma.num_layers):
        np.testing.assert_allclose(ours[exit_layer], per_exit[exit_layer].numpy(), atol=1e-4)


def test_truncated_runs_equal_the_reference_too(gemma: Backbone, spec: TaskSpec) -> None:
    """``predict_at(e)`` runs only layers 1..e; its answer is still the reference's exit e."""
    probe = gemma.for_task(spec)
    per_exit, _ = reference.exit_probabilities(
        gemma.model, gemma.tokenizer, TEMPLATE.replace("{text}", TEXTS[0]), WORDS
    )
    for exit_layer in (0, 1, 9, 17):
        got = probe.predict_at([TEXTS[0]], exit_layer)[0]
        np.testing.assert_allclose(got, per_exit[exit_layer].numpy(), atol=1e-4)


def test_the_reference_is_not_trivially_constant(gemma: Backbone) -> None:
    """Guard the guard: exits differ, so agreeing with the reference means something."""
    per_exit, _ = reference.exit_probabilities(
        gemma.model, gemma.tokenizer, TEMPLATE.replace("{text}", TEXTS[0]), WORDS
    )
    assert torch.max(torch.abs(per_exit[1] - per_exit[17])) > 1e-2
