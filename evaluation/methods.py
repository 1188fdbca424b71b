"""Scores of RAEE and its baselines on one task, from arrays the runner collects.

Every method is scored with the task's metric (accuracy, or Matthews correlation
for CoLA) and reports the average exit it runs to:

* ``full``: the last exit, zero-shot;
* ``raee``: the service's answers (exit from the retrieved exit distribution);
* ``knn``: the majority label of the same k neighbours (ties: the nearest one's
  label). Does exit information add anything over copying neighbours' labels?
  It runs no backbone layer, so its average exit is 0;
* ``static``: the single exit best on the train split, for every query;
* ``confidence``: the first exit whose max label probability reaches tau, tau
  chosen on a train sample (training-free early exit);
* ``oracle``: right whenever any exit is right (an upper bound); its exit is the
  first right one.

One ablation is scored beside them (``ABLATIONS``), not part of the paper:

* ``raee_informative``: the paper's rule over the same neighbours, but blind to
  *constant* exits, those predicting one class for (nearly) every train example.
  Such an exit is "correct" for every example of that class, so its exit
  information says only what the neighbours' labels say, and RAEE collapses
  towards the kNN vote. The share is measured on the confidence baseline's
  train sample.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from raee.exit_info import ExitInfo
from raee.exit_rule import choose_exit
from raee.store import Neighbour
from raee.tasks import Metric

METHODS = ("full", "raee", "knn", "static", "confidence", "oracle")
ABLATIONS = ("raee_informative",)
CONSTANT_SHARE = 0.99
TAU_GRID = (*(float(t) for t in np.round(np.arange(0.5, 1.0, 0.025), 3)), 0.99, 0.999)


@dataclass(frozen=True)
class TaskArrays:
    gold: np.ndarray  # (n,) label indices of the test split
    test_probs: np.ndarray  # (n, L + 1, C) label probabilities at every exit
    raee_preds: np.ndarray  # (n,) from the service
    raee_exits: np.ndarray  # (n,)
    full_preds: np.ndarray  # (n,) from the service
    neighbour_labels: np.ndarray  # (n, k) label indices, nearest first
    neighbours: Sequence[Sequence[Neighbour]]  # (n, k) the same neighbours' exit information
    train_accuracy_per_exit: np.ndarray  # (L + 1,)
    train_probs: np.ndarray  # (m, L + 1, C) a train sample, for tau
    train_gold: np.ndarray  # (m,)


@dataclass(frozen=True)
class MethodScore:
    score: float
    avg_exit: float


def constant_exits(probs: np.ndarray, share: float = CONSTANT_SHARE) -> np.ndarray:
    """``(L + 1,)`` True where one class is the prediction for at least ``share`` of the rows."""
    predictions = probs.argmax(axis=-1)  # (m, L + 1)
    num_labels = probs.shape[-1]
    counts = np.stack([np.bincount(column, minlength=num_labels) for column in predictions.T])
    return np.asarray(counts.max(axis=1) >= share * len(probs))


def exits_ignoring(
    neighbours: Sequence[Sequence[Neighbour]], ignored: np.ndarray, num_layers: int
) -> np.ndarray:
    """The paper's exit rule per query, with the ``ignored`` exits removed from all exit information."""
    exits = [
        choose_exit([dataclasses.replace(n, exit=_without(n.exit, ignored)) for n in row], num_layers)
        for row in neighbours
    ]
    return np.asarray([decision.exit_layer for decision in exits], dtype=np.int64)


def _without(info: ExitInfo, ignored: np.ndarray) -> ExitInfo:
    kept = [i for i, layer in enumerate(info.layers) if not ignored[layer]]
    return ExitInfo(tuple(info.layers[i] for i in kept), tuple(info.probs[i] for i in kept))


def knn_vote(neighbour_labels: np.ndarray, num_labels: int) -> np.ndarray:
    votes = np.stack([np.bincount(row, minlength=num_labels) for row in neighbour_labels])
    best = votes.max(axis=1, keepdims=True)
    tied = votes == best
    # Among tied labels, the nearest neighbour's label that is tied wins.
    predictions = []
    for row, ties in zip(neighbour_labels, tied, strict=True):
        predictions.append(next(int(label) for label in row if ties[label]))
    return np.asarray(predictions)


def confidence_exits(probs: np.ndarray, tau: float) -> np.ndarray:
    """First exit whose max probability is at least tau; the last exit if none is."""
    confident = probs.max(axis=-1) >= tau
    last = probs.shape[1] - 1
    return np.asarray(np.where(confident.any(axis=1), confident.argmax(axis=1), last))


def choose_tau(probs: np.ndarray, gold: np.ndarray, metric: Metric) -> float:
    """The tau of the grid with the best train score; ties go to the shallower average exit."""
    best: tuple[float, float, float] | None = None
    for tau in TAU_GRID:
        exits = confidence_exits(probs, float(tau))
        predictions = probs[np.arange(len(gold)), exits].argmax(axis=-1)
        key = (metric.score(predictions, gold), -float(exits.mean()), float(tau))
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return best[2]


def evaluate(arrays: TaskArrays, metric: Metric) -> dict[str, MethodScore]:
    """The score and average exit of every method of ``METHODS`` and ``ABLATIONS``."""
    n, exits_plus_one, num_labels = arrays.test_probs.shape
    last = exits_plus_one - 1
    rows = np.arange(n)
    per_exit = arrays.test_probs.argmax(axis=-1)  # (n, L + 1)
    static_exit = int(np.argmax(arrays.train_accuracy_per_exit))
    tau = choose_tau(arrays.train_probs, arrays.train_gold, metric)
    confident = confidence_exits(arrays.test_probs, tau)
    right = per_exit == arrays.gold[:, None]
    oracle_exit = np.where(right.any(axis=1), right.argmax(axis=1), last)
    oracle_preds = np.where(right.any(axis=1), arrays.gold, per_exit[:, last])
    results = {
        "full": (arrays.full_preds, np.full(n, last)),
        "raee": (arrays.raee_preds, arrays.raee_exits),
        "knn": (knn_vote(arrays.neighbour_labels, num_labels), np.zeros(n)),
        "static": (per_exit[:, static_exit], np.full(n, static_exit)),
        "confidence": (per_exit[rows, confident], confident),
        "oracle": (oracle_preds, oracle_exit),
    }
    informative_exits = exits_ignoring(arrays.neighbours, constant_exits(arrays.train_probs), last)
    results["raee_informative"] = (per_exit[rows, informative_exits], informative_exits)
    return {
        method: MethodScore(metric.score(predictions, arrays.gold), float(np.mean(exits)))
        for method, (predictions, exits) in results.items()
    }
