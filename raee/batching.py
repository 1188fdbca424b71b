"""Batches of token rows: padding them, and cutting a batch into runs that pad little.

A model pads a batch to its longest member, and padding costs as much as real
tokens, while one more run costs a fixed amount. The cheapest split of texts
sorted by length is a contiguous one, found exactly by dynamic programming over
where each run ends (a batch holds at most a few hundred texts here).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def length_runs(lengths: Sequence[int], max_size: int, run_cost: int) -> list[list[int]]:
    """Indices of ``lengths`` in runs of at most ``max_size`` that cost the fewest token positions.

    A run costs ``run_cost + size * longest``. Runs come out shortest first; each
    lists its indices by increasing length.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0] + [-1] * len(order)  # best[j]: the cheapest split of the j shortest texts
    start_of = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[order[end - 1]]
        for start in range(max(0, end - max_size), end):
            total = best[start] + run_cost + (end - start) * longest
            if best[end] < 0 or total < best[end]:
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
