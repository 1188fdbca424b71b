"""The RAEE exit rule: neighbours' exit information to an exit distribution (docs/method.md §3).

For a query with retrieved neighbours ``i`` at squared L2 distances ``d_i``:

* weight ``w_i = min_j d_j / d_i`` (the closest neighbour weighs 1). Distances are
  floored at :data:`DISTANCE_FLOOR` so that an exact duplicate (``d = 0``) weighs 1
  and the others almost nothing, instead of ``0 / 0``;
* from each neighbour take its ``(l, p)`` pairs with ``p >= threshold`` (0.9), or,
  if it has none, its ``top`` (3) pairs of highest ``p``;
* ``score(l) = sum_i sum_(l, p) w_i p``; the exit is ``argmax_l score(l)``, ties to
  the earliest exit; with no usable neighbour, the full model (exit ``L``).

The normalised scores are the exit distribution ``P(z = l | q)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np

from raee.exit_info import ExitInfo

DEFAULT_K = 12
DEFAULT_THRESHOLD = 0.9
DEFAULT_TOP = 3
DISTANCE_FLOOR = 1e-6


class Fallback(Enum):
    NONE = 0
    NO_NEIGHBOURS = 1
    NO_EXIT_INFORMATION = 2


class HasExitInfo(Protocol):
    @property
    def squared_distance(self) -> float: ...

    @property
    def exit(self) -> ExitInfo: ...


@dataclass(frozen=True)
class ExitDecision:
    exit_layer: int
    distribution: np.ndarray  # (L + 1,), sums to 1
    weights: tuple[float, ...]  # one per neighbour, in input order
    fallback: Fallback


def neighbour_weights(distances: Sequence[float]) -> np.ndarray:
    """``min_j d_j / d_i`` with the zero-distance guard."""
    floored = np.maximum(np.asarray(distances, dtype=np.float64), DISTANCE_FLOOR)
    return np.asarray(floored.min() / floored, dtype=np.float64)


def taken_pairs(info: ExitInfo, threshold: float, top: int) -> list[tuple[int, float]]:
    """The pairs a neighbour contributes: confident ones, else its ``top`` most confident."""
    pairs = list(zip(info.layers, info.probs, strict=True))
    confident = [(layer, p) for layer, p in pairs if p >= threshold]
    if confident:
        return confident
    # sorted() is stable: among equal probabilities the earlier exit stays first.
    return sorted(pairs, key=lambda pair: -pair[1])[:top]


def choose_exit(
    neighbours: Sequence[HasExitInfo],
    num_layers: int,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
) -> ExitDecision:
    """The exit layer and exit distribution for one query's neighbours."""
    scores = np.zeros(num_layers + 1, dtype=np.float64)
    if not neighbours:
        return _full_model(scores, (), Fallback.NO_NEIGHBOURS)
    weights = neighbour_weights([n.squared_distance for n in neighbours])
    for neighbour, weight in zip(neighbours, weights, strict=True):
        for layer, p in taken_pairs(neighbour.exit, threshold, top):
            if not 0 <= layer <= num_layers:
                raise ValueError(f"stored exit layer {layer} is outside 0..{num_layers}")
            scores[layer] += weight * p
    total = scores.sum()
    if total <= 0.0:
        return _full_model(scores, tuple(weights), Fallback.NO_EXIT_INFORMATION)
    return ExitDecision(
        exit_layer=int(np.argmax(scores)),  # first maximum: ties go to the earliest exit
        distribution=scores / total,
        weights=tuple(float(w) for w in weights),
        fallback=Fallback.NONE,
    )


def _full_model(scores: np.ndarray, weights: tuple[float, ...], reason: Fallback) -> ExitDecision:
    distribution = np.zeros_like(scores)
    distribution[-1] = 1.0
    return ExitDecision(len(scores) - 1, distribution, tuple(float(w) for w in weights), reason)
