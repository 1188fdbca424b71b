"""Cutting a batch of work into runs that share one pass, at the least total cost.

Both models pad a batch to its largest member: the query encoder pads texts to
the longest (its cost grows with size × length), and a truncated forward pass
runs every row to the deepest exit among them (size × depth). One more pass
costs a fixed amount; a pass shared by unlike members wastes the padding. The
cheapest split of members sorted by that size measure is a contiguous one, found
exactly by dynamic programming over where each run ends (n ≤ a few hundred here).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RunCost = Callable[[int, int], float]
"""The cost of one run from its member count and its largest measure (length, depth)."""


def cheapest_runs(measures: Sequence[int], cost: RunCost, max_size: int | None = None) -> list[list[int]]:
    """Indices of ``measures`` grouped into runs of at most ``max_size``, least total ``cost`` first found.

    Runs come out in increasing order of measure; each lists its indices by
    increasing measure.
    """
    order = sorted(range(len(measures)), key=measures.__getitem__)
    widest = max_size or len(order)
    best = [0.0] + [float("inf")] * len(order)  # best[j]: the cheapest split of the first j members
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        largest = measures[order[end - 1]]
        for start in range(max(0, end - widest), end):
            total = best[start] + cost(end - start, largest)
            if total < best[end]:
                best[end], start_of[end] = total, start
    runs: list[list[int]] = []
    end = len(order)
    while end:
        runs.append(order[start_of[end] : end])
        end = start_of[end]
    return runs[::-1]


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool) -> np.ndarray:
    """Token rows as one ``(n, longest)`` int64 array, ``value`` filling the padding side."""
    width = max(len(row) for row in rows)
    batch = np.full((len(rows), width), value, dtype=np.int64)
    for index, row in enumerate(rows):
        if left:
            batch[index, width - len(row) :] = row
        else:
            batch[index, : len(row)] = row
    return batch
