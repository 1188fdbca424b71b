"""Scores of RAEE and its baselines on one task, from arrays the runner collects.

Every method is scored with the task's metric (accuracy, or Matthews correlation
for CoLA) and reports the average exit it runs to:

* ``full``: the last exit, zero-shot;
* ``raee``: the service's answers (exit from the retrieved exit distribution);
* ``knn``: the majority label of the same k neighbours (ties: the nearest one's
  label). Does exit information add anything over copying neighbours' labels?
  It runs no backbone layer, so its average exit is 0;
* ``static``: the single exit with the best task metric on a train sample, for
  every query (ties: the shallower exit);
* ``confidence``: the first *non-constant* exit whose max label probability
  reaches tau, tau chosen by the task metric on the same train sample;
* ``oracle``: right whenever any *non-constant* exit is right (an upper bound on
  choosing an exit per query); its exit is the first right one.

A *constant* exit predicts one class for (nearly) every train example. In a
causal LM exit 0 sees only the template's last token, so it is always constant.
Counting such exits makes two baselines degenerate; they are still reported,
under names that say what they measure (``DEGENERATE``):

* ``confidence_all_exits``: confidence over every exit. A constant exit is
  often confident, so this one stops there and scores that class's share;
* ``oracle_all_exits``: right whenever any exit, constant ones included, names
  the gold label. On a binary task with one constant exit per class this is 100
  by construction: label coverage, not an exit oracle.

One ablation is scored beside them (``ABLATIONS``), not part of the paper:

* ``raee_informative``: the paper's rule over the same neighbours, but blind to
  *constant* exits, those predicting one class for (nearly) every train example.
  Such an exit is "correct" for every example of that class, so its exit
  information says only what the neighbours' labels say, and RAEE collapses
  towards the kNN vote. The constant exits are found on the train sample.
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
DEGENERATE = ("confidence_all_exits", "oracle_all_exits")
ABLATIONS = ("raee_informative",)
# One line per reported method, for results.md (the module docstring has the reasons).
DEFINITIONS = {
    "full": "the last exit, zero-shot",
    "raee": "the services' answers: the exit RAEE chooses from the retrieved neighbours' exit information",
    "knn": "the majority label of the same neighbours (ties: the nearest); no backbone layer runs",
    "static": "the one exit with the best task metric on a train sample, for every query",
    "confidence": "the first non-constant exit whose max label probability reaches tau "
    "(tau chosen by the task metric on a train sample)",
    "oracle": "right whenever some non-constant exit is right; its exit is the first right one",
    "confidence_all_exits": "confidence over every exit, constant ones included",
    "oracle_all_exits": "right whenever some exit, constant ones included, names the gold label",
    "raee_informative": "ablation: the paper's rule blind to constant exits",
}
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
    train_probs: np.ndarray  # (m, L + 1, C) a train sample, for static's exit and tau
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


def confidence_exits(probs: np.ndarray, tau: float, allowed: np.ndarray | None = None) -> np.ndarray:
    """First ``allowed`` exit (default: all) whose max probability reaches tau; else the last exit."""
    confident = probs.max(axis=-1) >= tau
    if allowed is not None:
        confident &= allowed[None, :]
    last = probs.shape[1] - 1
    return np.asarray(np.where(confident.any(axis=1), confident.argmax(axis=1), last))


def choose_tau(
    probs: np.ndarray, gold: np.ndarray, metric: Metric, allowed: np.ndarray | None = None
) -> float:
    """The tau of the grid with the best train metric; ties go to the shallower average exit."""
    best: tuple[float, float, float] | None = None
    for tau in TAU_GRID:
        exits = confidence_exits(probs, float(tau), allowed)
        predictions = probs[np.arange(len(gold)), exits].argmax(axis=-1)
        key = (metric.score(predictions, gold), -float(exits.mean()), float(tau))
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return best[2]


def best_static_exit(probs: np.ndarray, gold: np.ndarray, metric: Metric) -> int:
    """The exit with the best train metric (not accuracy: on CoLA that picks a constant exit)."""
    scores = [metric.score(probs[:, e].argmax(axis=-1), gold) for e in range(probs.shape[1])]
    return int(np.argmax(scores))  # the first maximum: ties go to the shallower exit


def oracle(
    right: np.ndarray, last_predictions: np.ndarray, gold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle over ``right`` ``(n, exits)``: predictions and exits, the first right exit else the last."""
    any_right = right.any(axis=1)
    exits = np.where(any_right, right.argmax(axis=1), right.shape[1] - 1)
    return np.where(any_right, gold, last_predictions), exits


def evaluate(arrays: TaskArrays, metric: Metric) -> dict[str, MethodScore]:
    """The score and average exit of every method of ``METHODS``, ``DEGENERATE`` and ``ABLATIONS``."""
    n, exits_plus_one, num_labels = arrays.test_probs.shape
    last = exits_plus_one - 1
    rows = np.arange(n)
    per_exit = arrays.test_probs.argmax(axis=-1)  # (n, L + 1)
    train = (arrays.train_probs, arrays.train_gold)
    informative = ~constant_exits(arrays.train_probs)
    informative[last] = True  # the full model is the fallback of every method
    static_exit = best_static_exit(*train, metric)
    confident = confidence_exits(arrays.test_probs, choose_tau(*train, metric, informative), informative)
    confident_any = confidence_exits(arrays.test_probs, choose_tau(*train, metric))
    right = per_exit == arrays.gold[:, None]
    results = {
        "full": (arrays.full_preds, np.full(n, last)),
        "raee": (arrays.raee_preds, arrays.raee_exits),
        "knn": (knn_vote(arrays.neighbour_labels, num_labels), np.zeros(n)),
        "static": (per_exit[:, static_exit], np.full(n, static_exit)),
        "confidence": (per_exit[rows, confident], confident),
        "oracle": oracle(right & informative[None, :], per_exit[:, last], arrays.gold),
        "confidence_all_exits": (per_exit[rows, confident_any], confident_any),
        "oracle_all_exits": oracle(right, per_exit[:, last], arrays.gold),
    }
    informative_exits = exits_ignoring(arrays.neighbours, ~informative, last)
    results["raee_informative"] = (per_exit[rows, informative_exits], informative_exits)
    return {
        method: MethodScore(metric.score(predictions, arrays.gold), float(np.mean(exits)))
        for method, (predictions, exits) in results.items()
    }
