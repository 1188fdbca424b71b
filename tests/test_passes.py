"""How a micro-batch is split into forward passes (inference_service/passes.py): pure planning."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from inference_service.passes import LAYER_COST, PASS_COST, plan_passes
from raee.batching import cheapest_runs


def _cost(exits: list[int], passes: list[list[int]]) -> float:
    return sum(PASS_COST + max(exits[i] for i in run) * (LAYER_COST + len(run)) for run in passes)


@pytest.mark.parametrize("seed", range(20))
def test_the_plan_is_a_partition_of_least_cost(seed: int) -> None:
    rng = np.random.default_rng(seed)
    exits = [int(e) for e in rng.integers(0, 19, size=int(rng.integers(1, 9)))]
    passes = plan_passes(exits)
    assert sorted(i for run in passes for i in run) == list(range(len(exits)))
    order = sorted(range(len(exits)), key=exits.__getitem__)
    bounds = range(1, len(order))
    cheapest = min(
        _cost(exits, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))])
        for count in range(len(order))
        for cuts in itertools.combinations(bounds, count)
    )
    assert _cost(exits, passes) == pytest.approx(cheapest)


def test_shallow_rows_leave_deep_passes_and_near_exits_share_one() -> None:
    exits = [13, 0, 13, 0, 12, 0, 13]
    passes = plan_passes(exits)
    assert [sorted(exits[i] for i in run) for run in passes] == [[0, 0, 0], [12, 13, 13, 13]]
    # With free passes and layers, every exit gets its own pass (nothing padded).
    assert len(plan_passes(exits, layer_cost=0.0, pass_cost=0.0)) == len(set(exits))


def test_a_run_never_exceeds_the_size_limit() -> None:
    runs = cheapest_runs([5] * 10, lambda size, largest: largest, max_size=4)  # a cost per run
    assert len(runs) == 3 and all(len(run) <= 4 for run in runs)
    assert cheapest_runs([], lambda size, largest: 1.0) == []
