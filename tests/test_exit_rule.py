"""The exit rule on hand-computed cases."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from raee.exit_info import ExitInfo
from raee.exit_rule import Fallback, choose_exit, neighbour_weights, taken_pairs


@dataclass(frozen=True)
class N:
    squared_distance: float
    exit: ExitInfo


def info(*pairs: tuple[int, float]) -> ExitInfo:
    return ExitInfo(tuple(layer for layer, _ in pairs), tuple(p for _, p in pairs))


def test_weights_are_min_distance_over_distance() -> None:
    np.testing.assert_allclose(neighbour_weights([0.5, 1.0, 2.0]), [1.0, 0.5, 0.25])


def test_zero_distance_duplicate_weighs_one_not_nan() -> None:
    weights = neighbour_weights([0.0, 0.0, 0.5])
    assert weights[0] == weights[1] == 1.0
    assert 0 < weights[2] < 1e-5


def test_confident_pairs_else_top_three() -> None:
    assert taken_pairs(info((2, 0.95), (5, 0.5), (7, 0.91)), 0.9, 3) == [(2, 0.95), (7, 0.91)]
    low = info((1, 0.6), (2, 0.8), (3, 0.7), (4, 0.8), (5, 0.1))
    assert taken_pairs(low, 0.9, 3) == [(2, 0.8), (4, 0.8), (3, 0.7)]
    assert taken_pairs(info(), 0.9, 3) == []


def test_hand_computed_scores() -> None:
    # d = (0.5, 1.0) -> w = (1, 0.5).
    # n1 contributes (1, 0.95), (3, 0.92); n2 has no p >= 0.9, so its top 3: (3, 0.8), (2, 0.7), (4, 0.6).
    # score: l1 = 0.95, l2 = 0.35, l3 = 0.92 + 0.4 = 1.32, l4 = 0.3 -> exit 3.
    neighbours = [
        N(0.5, info((1, 0.95), (3, 0.92), (4, 0.5))),
        N(1.0, info((2, 0.7), (3, 0.8), (4, 0.6), (5, 0.55))),
    ]
    decision = choose_exit(neighbours, num_layers=5)
    assert decision.exit_layer == 3
    assert decision.fallback is Fallback.NONE
    expected = np.array([0.0, 0.95, 0.35, 1.32, 0.3, 0.0])
    np.testing.assert_allclose(decision.distribution, expected / expected.sum())
    assert decision.weights == (1.0, 0.5)


def test_ties_go_to_the_earliest_exit() -> None:
    neighbours = [N(1.0, info((4, 0.95))), N(1.0, info((2, 0.95)))]
    assert choose_exit(neighbours, num_layers=6).exit_layer == 2


def test_fallbacks_to_the_full_model() -> None:
    none = choose_exit([], num_layers=18)
    assert (none.exit_layer, none.fallback) == (18, Fallback.NO_NEIGHBOURS)
    assert none.distribution[-1] == 1.0
    empty = choose_exit([N(0.3, info()), N(0.4, info())], num_layers=18)
    assert (empty.exit_layer, empty.fallback) == (18, Fallback.NO_EXIT_INFORMATION)


def test_stored_layers_outside_the_backbone_are_refused() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        choose_exit([N(0.1, info((9, 0.99)))], num_layers=4)
