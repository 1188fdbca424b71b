"""Exit probing on the real Gemma-3-270M and on a tiny random RoBERTa (masked-LM mechanics)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest

from raee.backbone import Backbone
from raee.errors import InputTooLongError
from raee.tasks import TaskSpec
from tests.conftest import SENTIMENT_TEXTS

MASKED_SPEC = TaskSpec.from_flags("m", "{text} It was {mask} .", ["neg=bad", "pos=good", "mid=okay"])


@contextmanager
def layer_calls(backbone: Backbone) -> Iterator[list[int]]:
    """Counts how often each transformer layer runs."""
    counts = [0] * backbone.num_layers
    handles = []
    for index, layer in enumerate(backbone.layers):

        def count(*_: object, index: int = index) -> None:
            counts[index] += 1

        handles.append(layer.register_forward_hook(count))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture(params=["gemma", "tiny_roberta"])
def probe_case(request: pytest.FixtureRequest, cloze_spec: TaskSpec) -> tuple[Backbone, TaskSpec]:
    backbone: Backbone = request.getfixturevalue(request.param)
    return backbone, (cloze_spec if backbone.kind == "causal" else MASKED_SPEC)


def test_gemma_is_the_18_layer_causal_lm(gemma: Backbone) -> None:
    assert gemma.kind == "causal"
    assert gemma.num_layers == 18
    assert str(gemma.id).startswith("gemma-3-270m/L18/")
    assert str(gemma.id) == f"gemma-3-270m/L18/{gemma.id.fingerprint}"


def test_tiny_roberta_takes_the_masked_path(tiny_roberta: Backbone) -> None:
    assert tiny_roberta.kind == "masked"
    assert tiny_roberta.num_layers == 3


def test_exit_probabilities_shape_and_normalisation(probe_case: tuple[Backbone, TaskSpec]) -> None:
    backbone, spec = probe_case
    probabilities = backbone.for_task(spec).exit_probabilities(SENTIMENT_TEXTS)
    assert probabilities.shape == (len(SENTIMENT_TEXTS), backbone.num_layers + 1, spec.num_labels)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, atol=1e-5)


def test_predict_at_equals_the_exit_of_the_full_pass(probe_case: tuple[Backbone, TaskSpec]) -> None:
    backbone, spec = probe_case
    probe = backbone.for_task(spec)
    everything = probe.exit_probabilities(SENTIMENT_TEXTS)
    for exit_layer in range(backbone.num_layers + 1):
        at_exit = probe.predict_at(SENTIMENT_TEXTS, exit_layer)
        np.testing.assert_allclose(
            at_exit, everything[:, exit_layer], atol=1e-5, err_msg=f"exit {exit_layer}"
        )


def test_no_layer_above_the_exit_runs(probe_case: tuple[Backbone, TaskSpec]) -> None:
    backbone, spec = probe_case
    probe = backbone.for_task(spec)
    for exit_layer in range(backbone.num_layers + 1):
        with layer_calls(backbone) as counts:
            probe.predict_at(SENTIMENT_TEXTS[:2], exit_layer)
        assert counts == [1] * exit_layer + [0] * (backbone.num_layers - exit_layer), exit_layer
    with layer_calls(backbone) as counts:
        probe.exit_probabilities(SENTIMENT_TEXTS[:2])
    assert counts == [1] * backbone.num_layers


def test_batched_equals_one_by_one(probe_case: tuple[Backbone, TaskSpec]) -> None:
    backbone, spec = probe_case
    probe = backbone.for_task(spec)
    batched = probe.exit_probabilities(SENTIMENT_TEXTS)
    single = np.stack([probe.exit_probabilities([text])[0] for text in SENTIMENT_TEXTS])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    middle = backbone.num_layers // 2
    np.testing.assert_allclose(
        probe.predict_at(SENTIMENT_TEXTS, middle),
        np.concatenate([probe.predict_at([text], middle) for text in SENTIMENT_TEXTS]),
        atol=1e-5,
    )


def test_real_backbone_exits_disagree(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    # What RAEE relies on: intermediate exits of a real model predict differently from the last.
    probabilities = gemma.for_task(cloze_spec).exit_probabilities(SENTIMENT_TEXTS)
    predictions = probabilities.argmax(axis=-1)
    assert (predictions != predictions[:, -1:]).any()
    assert len({tuple(column) for column in predictions.T}) > 2


def test_passes_in_two_threads_at_once_stop_at_their_own_exits(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    """A request the worker serves during its warm-up runs beside it, on the same layer modules."""
    probe = gemma.for_task(cloze_spec)
    texts = (SENTIMENT_TEXTS[:3], SENTIMENT_TEXTS[3:])
    start = threading.Barrier(2)

    def run(rows: list[str], exit_layer: int) -> np.ndarray:
        start.wait()
        return probe.predict_at(rows, exit_layer)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for exits in ((9, 9), (12, 6), (18, 3)):
            expected = [probe.predict_at(rows, layer) for rows, layer in zip(texts, exits, strict=True)]
            for _ in range(2):
                passes = [pool.submit(run, rows, layer) for rows, layer in zip(texts, exits, strict=True)]
                for done, wanted in zip(passes, expected, strict=True):
                    np.testing.assert_allclose(done.result(), wanted, atol=1e-5)


def test_bad_exit_layers_and_long_inputs_are_refused(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    probe = gemma.for_task(cloze_spec)
    with pytest.raises(ValueError, match=r"exit_layer: 19 is outside 0\.\.18"):
        probe.predict_at(["x"], 19)
    with pytest.raises(ValueError, match="exit_layer"):
        probe.predict_at(["x"], -1)
    with pytest.raises(ValueError, match="texts"):
        probe.exit_probabilities([])
    with pytest.raises(InputTooLongError, match="text 1: prompt is"):
        probe.exit_probabilities(["short", "word " * 600])


def test_label_ids_use_the_leading_space_form(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    ids = gemma.label_token_ids(cloze_spec)
    assert gemma.tokenizer.convert_ids_to_tokens(ids) == ["▁terrible", "▁great"]
