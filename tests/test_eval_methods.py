"""The evaluation's method scores on hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.methods import TaskArrays, choose_tau, confidence_exits, evaluate, knn_vote
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
        train_accuracy_per_exit=np.array([40.0, 70.0, 60.0]),
        train_probs=test,
        train_gold=gold,
    )
    scores = evaluate(arrays, Metric.ACCURACY)
    assert (scores["full"].score, scores["full"].avg_exit) == (50.0, 2.0)  # right on 1 and 4
    assert (scores["raee"].score, scores["raee"].avg_exit) == (100.0, 1.0)
    assert (scores["knn"].score, scores["knn"].avg_exit) == (50.0, 0.0)  # votes 1, 0, 0, 1
    assert (scores["static"].score, scores["static"].avg_exit) == (50.0, 1.0)  # exit 1: 0, 1, 1, 0
    assert scores["oracle"].score == 75.0  # example 3 is wrong at every exit
    assert scores["oracle"].avg_exit == pytest.approx((0 + 1 + 2 + 0) / 4)
    assert 0.0 <= scores["confidence"].score <= 100.0
