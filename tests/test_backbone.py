"""Exit probing on the real Gemma-3-270M and on a tiny random RoBERTa (masked-LM mechanics)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch

from raee import backbone as backbone_module
from raee.backbone import Backbone
from raee.errors import InputTooLongError
from raee.tasks import TaskSpec
from tests.conftest import SENTIMENT_TEXTS

MASKED_SPEC = TaskSpec.from_flags("m", "{text} It was {mask} .", ["neg=bad", "pos=good", "mid=okay"])


@contextmanager
def shapes_per_layer(backbone: Backbone) -> Iterator[list[list[tuple[int, int]]]]:
    """The (rows, sequence length) each transformer layer ran with, call by call."""
    rows: list[list[tuple[int, int]]] = [[] for _ in backbone.layers]
    handles = []
    for index, layer in enumerate(backbone.layers):

        def count(_module: object, _args: object, output: object, index: int = index) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            assert isinstance(hidden, torch.Tensor)
            rows[index].append((hidden.shape[0], hidden.shape[1]))

        handles.append(layer.register_forward_hook(count))
    try:
        yield rows
    finally:
        for handle in handles:
            handle.remove()


def calls(shapes: list[list[tuple[int, int]]]) -> list[int]:
    """How often each layer ran, from :func:`shapes_per_layer`."""
    return [len(layer) for layer in shapes]


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
        with shapes_per_layer(backbone) as shapes:
            probe.predict_at(SENTIMENT_TEXTS[:2], exit_layer)
        assert calls(shapes) == [1] * exit_layer + [0] * (backbone.num_layers - exit_layer), exit_layer
    with shapes_per_layer(backbone) as shapes:
        probe.exit_probabilities(SENTIMENT_TEXTS[:2])
    assert calls(shapes) == [1] * backbone.num_layers


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


def mixed_exits(num_layers: int) -> list[int]:
    """One exit per sentiment text: the embeddings, the top, and some between, one repeated.

    The longest text (the third) leaves after layer 1, so the pass can shed its padding.
    """
    return [num_layers // 2, 0, 1, num_layers, num_layers // 2]


def expected_shapes(lengths: list[int], exits: list[int], layer: int, *, trimmed: bool) -> tuple[int, int]:
    """Layer ``layer`` (from 0) runs for the rows whose exit is above it, over their longest prompt."""
    staying = [n for n, e in zip(lengths, exits, strict=True) if e > layer]
    return len(staying), max(staying) if trimmed else max(lengths)


def test_rows_leave_one_pass_at_their_own_exits(probe_case: tuple[Backbone, TaskSpec]) -> None:
    backbone, spec = probe_case
    probe = backbone.for_task(spec)
    exits = mixed_exits(backbone.num_layers)
    ids = probe.tokenize(SENTIMENT_TEXTS)
    lengths = [len(row) for row in ids]
    assert backbone.drops_rows
    with shapes_per_layer(backbone) as shapes:
        together = probe.predict_rows(ids, exits)
    # One pass; layer k runs only for the rows whose exit is above it, and (right padding)
    # only over the columns their prompts fill.
    assert backbone.tokenizer.padding_side == "right"
    assert shapes == [[expected_shapes(lengths, exits, k, trimmed=True)] for k in range(backbone.num_layers)]
    assert shapes[1][0][1] < max(lengths)  # padding was shed
    for text, exit_layer, answer in zip(SENTIMENT_TEXTS, exits, together, strict=True):
        np.testing.assert_allclose(answer, probe.predict_at([text], exit_layer)[0], atol=1e-5)


def test_rows_below_one_deep_exit_run_as_separate_passes(probe_case: tuple[Backbone, TaskSpec]) -> None:
    """With one exit above the embeddings, one pass per exit reads no weights twice."""
    backbone, spec = probe_case
    probe = backbone.for_task(spec)
    middle = backbone.num_layers // 2
    exits = [0, middle, 0, middle, 0]
    ids = probe.tokenize(SENTIMENT_TEXTS)
    with shapes_per_layer(backbone) as shapes:
        answers = probe.predict_rows(ids, exits)
    deep_group = (2, max(len(ids[1]), len(ids[3])))  # padded to its own longest prompt only
    assert shapes == [[deep_group]] * middle + [[]] * (backbone.num_layers - middle)
    for text, exit_layer, answer in zip(SENTIMENT_TEXTS, exits, answers, strict=True):
        np.testing.assert_allclose(answer, probe.predict_at([text], exit_layer)[0], atol=1e-5)


def test_an_unknown_layer_input_along_the_sequence_keeps_the_padding(
    gemma: Backbone, cloze_spec: TaskSpec
) -> None:
    """A layer input the pass does not know (here one per token, which the layers ignore)."""
    probe = gemma.for_task(cloze_spec)
    exits = mixed_exits(gemma.num_layers)
    ids = probe.tokenize(SENTIMENT_TEXTS)
    lengths = [len(row) for row in ids]

    def per_token_input(_module: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return args, {**kwargs, "per_token": torch.zeros(len(ids), max(lengths))}

    handles = [layer.register_forward_pre_hook(per_token_input, with_kwargs=True) for layer in gemma.layers]
    try:
        with shapes_per_layer(gemma) as shapes:
            together = probe.predict_rows(ids, exits)
    finally:
        for handle in handles:
            handle.remove()
    assert shapes == [[expected_shapes(lengths, exits, k, trimmed=False)] for k in range(gemma.num_layers)]
    for text, exit_layer, answer in zip(SENTIMENT_TEXTS, exits, together, strict=True):
        np.testing.assert_allclose(answer, probe.predict_at([text], exit_layer)[0], atol=1e-5)


def test_a_layout_whose_rows_cannot_be_dropped_runs_one_pass_per_exit(
    tiny_roberta: Backbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """As if the model handed its layers a per-row tensor the pass does not know to slice."""
    monkeypatch.setattr(backbone_module._DroppingRows, "_fit", lambda _self, _name, value: value)
    backbone = Backbone(tiny_roberta.model, tiny_roberta.tokenizer, name="tiny", kind="masked")
    probe = backbone.for_task(MASKED_SPEC)
    exits = mixed_exits(backbone.num_layers)
    with caplog.at_level(logging.WARNING, logger="raee.backbone"):
        assert not backbone.drops_rows
    assert "one pass per exit" in caplog.text
    with shapes_per_layer(backbone) as shapes:
        answers = probe.predict_rows(probe.tokenize(SENTIMENT_TEXTS), exits)
    assert len(shapes[0]) == len({e for e in exits if e > 0})  # a pass per distinct exit above 0
    for text, exit_layer, answer in zip(SENTIMENT_TEXTS, exits, answers, strict=True):
        np.testing.assert_allclose(answer, probe.predict_at([text], exit_layer)[0], atol=1e-5)


def test_a_check_that_reads_other_states_turns_row_dropping_off(
    tiny_roberta: Backbone, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = backbone_module._DroppingRows._read_exiting

    def misread(self: Any, hidden: torch.Tensor, exit_layer: int) -> None:
        original(self, hidden + 1.0, exit_layer)

    monkeypatch.setattr(backbone_module._DroppingRows, "_read_exiting", misread)
    backbone = Backbone(tiny_roberta.model, tiny_roberta.tokenizer, name="tiny", kind="masked")
    with caplog.at_level(logging.WARNING, logger="raee.backbone"):
        assert not backbone.drops_rows
    assert "dropping rows changed their states" in caplog.text


def test_a_batch_as_long_as_it_is_wide_gets_a_padding_column(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    """With as many rows as columns, the rows' axis of a layer input could not be told by size."""
    probe = gemma.for_task(cloze_spec)
    words = probe.tokenize(["a gorgeous , witty , seductive movie ."])[0]
    ids = [words[:5], words[:3], words[:4], words[:2], words[:5]]
    exits = [gemma.num_layers // 2, 1, 1, gemma.num_layers, gemma.num_layers // 2]
    with shapes_per_layer(gemma) as shapes:
        together = probe.predict_rows(ids, exits)
    assert shapes[0] == [(5, 6)]  # 5 + 1 columns
    assert shapes[1] == [(3, 5)]  # the padding column went with the rows that left
    for row, exit_layer, answer in zip(ids, exits, together, strict=True):
        np.testing.assert_allclose(answer, probe.predict_tokens([row], exit_layer)[0], atol=1e-5)


def test_predict_rows_refuses_bad_exits(gemma: Backbone, cloze_spec: TaskSpec) -> None:
    probe = gemma.for_task(cloze_spec)
    ids = probe.tokenize(SENTIMENT_TEXTS[:2])
    with pytest.raises(ValueError, match="exits: 1 exits for 2 prompts"):
        probe.predict_rows(ids, [3])
    with pytest.raises(ValueError, match=r"exit_layer: 19 is outside 0\.\.18"):
        probe.predict_rows(ids, [3, 19])


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

    def run(rows: list[str], exits: list[int]) -> np.ndarray:
        start.wait()
        return probe.predict_rows(probe.tokenize(rows), exits)

    def alone(rows: list[str], exits: list[int]) -> np.ndarray:
        return np.stack([probe.predict_at([row], layer)[0] for row, layer in zip(rows, exits, strict=True)])

    # Both passes at one exit each, then rows leaving one pass at different exits.
    cases = [([a] * 3, [b] * 2) for a, b in ((9, 9), (12, 6), (18, 3))] + [([0, 18, 6], [12, 3])]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for exits in cases:
            expected = [alone(rows, layers) for rows, layers in zip(texts, exits, strict=True)]
            for _ in range(2):
                passes = [pool.submit(run, rows, layers) for rows, layers in zip(texts, exits, strict=True)]
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
