"""The evaluation's method scores on hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.methods import (
    TaskArrays,
    choose_tau,
    confidence_exits,
    constant_exits,
    evaluate,
    exits_ignoring,
    knn_vote,
)
from raee.exit_info import ExitInfo
from raee.store import Neighbour
from raee.tasks import Metric


def probs(*rows: list[float]) -> np.ndarray:
    """One example: p(class 1) at each exit, two classes."""
    return np.array([[[1 - p, p] for p in row] for row in rows])


def test_knn_vote_breaks_ties_by_the_nearest_neighbour() -> None:
    labels = np.array([[1, 0, 0, 1], [0, 1, 1, 1], [2, 0, 1, 2]])
    assert knn_vote(labels, 3).tolist() == [1, 1, 2]


def test_confidence_exit_is_the_first_confident_one_else_the_last() -> None:
    p = probs([0.6, 0.95, 0.99], [0.5, 0.6, 0.7])
    assert confidence_exits(p, 0.9).tolist() == [1, 2]
    assert confidence_exits(p, 0.999).tolist() == [2, 2]


def test_tau_prefers_the_best_score_then_the_shallowest_exits() -> None:
    # Exit 0 is confidently wrong for the second example; exit 2 is right for both.
    p = probs([0.96, 0.97, 0.98], [0.96, 0.4, 0.1])
    gold = np.array([1, 0])
    tau = choose_tau(p, gold, Metric.ACCURACY)
    assert tau > 0.96  # below it, example 2 exits at 0 and is wrong


def neighbour(squared_distance: float, layers: tuple[int, ...], probs: tuple[float, ...]) -> Neighbour:
    """A retrieved example at this squared distance from the query (unit vectors: d = 2 - 2 s)."""
    similarity = 1.0 - squared_distance / 2.0
    return Neighbour(0, similarity, "example", "text", "label", 0, ExitInfo(layers, probs))


def test_constant_exits_are_those_predicting_one_class_for_nearly_every_row() -> None:
    # Exit 0 always says class 1; exit 1 says class 0 for 99 of 100 rows; exit 2 varies.
    rows = [[0.9, 0.1 if i else 0.9, 0.9 if i % 2 else 0.1] for i in range(100)]
    assert constant_exits(probs(*rows)).tolist() == [True, True, False]
    assert constant_exits(probs(*rows), share=1.0).tolist() == [True, False, False]


def test_the_rule_blind_to_ignored_exits_chooses_among_the_others() -> None:
    near = neighbour(0.1, (0, 2), (0.99, 0.6))
    far = neighbour(0.2, (0, 1), (0.99, 0.7))
    none_ignored = np.array([False, False, False])
    exit_0_ignored = np.array([True, False, False])
    # With exit 0, both neighbours put most weight there.
    assert exits_ignoring([[near, far]], none_ignored, 2).tolist() == [0]
    # Without it: exit 2 scores 1.0 x 0.6, exit 1 scores 0.5 x 0.7 (weights min d / d).
    assert exits_ignoring([[near, far]], exit_0_ignored, 2).tolist() == [2]
    # Nothing left to go on: the full model.
    assert exits_ignoring([[neighbour(0.1, (0,), (0.99,))]], exit_0_ignored, 2).tolist() == [2]


def test_evaluate_scores_every_method() -> None:
    test = probs([0.9, 0.2, 0.8], [0.1, 0.7, 0.3], [0.6, 0.6, 0.6], [0.4, 0.3, 0.2])
    gold = np.array([1, 1, 0, 0])
    arrays = TaskArrays(
        gold=gold,
        test_probs=test,
        raee_preds=np.array([1, 1, 0, 0]),
        raee_exits=np.array([0, 1, 2, 1]),
        full_preds=test[:, -1].argmax(-1),
        neighbour_labels=np.array([[1, 1, 0], [0, 0, 1], [0, 1, 0], [1, 1, 1]]),
        # Exit 0 predicts class 1 for examples 1, 3 (0.6 > 0.5) and class 0 for 2, 4: not constant.
        neighbours=[[neighbour(0.1, (1,), (0.7,))]] * 4,
        train_probs=test,
        train_gold=gold,
    )
    scores = evaluate(arrays, Metric.ACCURACY)
    assert (scores["full"].score, scores["full"].avg_exit) == (50.0, 2.0)  # right on 1 and 4
    assert (scores["raee"].score, scores["raee"].avg_exit) == (100.0, 1.0)
    assert (scores["knn"].score, scores["knn"].avg_exit) == (50.0, 0.0)  # votes 1, 0, 0, 1
    # Every exit scores 50 on the train sample (here the test set): the shallowest wins.
    assert (scores["static"].score, scores["static"].avg_exit) == (50.0, 0.0)
    assert scores["oracle"].score == 75.0  # example 3 is wrong at every exit
    assert scores["oracle"].avg_exit == pytest.approx((0 + 1 + 2 + 0) / 4)
    assert 0.0 <= scores["confidence"].score <= 100.0
    # No exit is constant here: each baseline equals its variant over every exit,
    # and the ablation is the rule itself: exit 1 for all.
    for name in ("confidence", "oracle"):
        assert scores[f"{name}_all_exits"] == scores[name]
    assert (scores["raee_informative"].score, scores["raee_informative"].avg_exit) == (50.0, 1.0)


def test_constant_exits_do_not_make_the_baselines_degenerate() -> None:
    """CoLA-like: exit 0 says class 1 for everything, which is 75 % accurate and worth MCC 0."""
    test = probs([0.9, 0.8, 0.7], [0.9, 0.3, 0.3], [0.9, 0.7, 0.9], [0.9, 0.2, 0.1])
    gold = np.array([1, 1, 1, 0])
    arrays = TaskArrays(
        gold=gold,
        test_probs=test,
        raee_preds=gold,
        raee_exits=np.ones(4, dtype=np.int64),
        full_preds=test[:, -1].argmax(-1),
        neighbour_labels=np.ones((4, 1), dtype=np.int64),
        neighbours=[[neighbour(0.1, (1,), (0.7,))]] * 4,
        train_probs=test,
        train_gold=gold,
    )
    mcc = Metric.MATTHEWS.score(np.array([1, 0, 1, 0]), gold)  # exits 1 and 2 predict 1, 0, 1, 0
    scores = evaluate(arrays, Metric.MATTHEWS)
    # By accuracy all three exits tie and the constant exit 0 would be chosen; by MCC, exit 1.
    assert (scores["static"].score, scores["static"].avg_exit) == (pytest.approx(mcc), 1.0)
    # Confidence skips exit 0 however confident it is; over every exit, tau must exceed its 0.9.
    assert (scores["confidence"].score, scores["confidence"].avg_exit) == (pytest.approx(mcc), 1.0)
    assert scores["confidence_all_exits"].avg_exit == 2.0
    # The oracle over informative exits misses example 2; counting exit 0 covers every label.
    assert (scores["oracle"].score, scores["oracle"].avg_exit) == (pytest.approx(mcc), 1.25)
    assert (scores["oracle_all_exits"].score, scores["oracle_all_exits"].avg_exit) == (100.0, 0.25)
