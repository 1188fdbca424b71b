"""Exit information: which exits of the backbone got an example right, and how surely.

For a labelled example with gold class ``y`` the exit information is the list of
``(l, p_l)`` for every exit ``l`` whose argmax class is ``y``, ``p_l`` being that
exit's max probability (``docs/method.md`` §2). Examples no exit gets right
have an empty list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExitInfo:
    layers: tuple[int, ...]
    probs: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.probs):
            raise ValueError("exit info: layers and probs differ in length")

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, gold: int) -> ExitInfo:
        """``probabilities`` is one example's ``(L + 1, C)`` array of label-word probabilities."""
        predictions = probabilities.argmax(axis=-1)
        layers = np.flatnonzero(predictions == gold)
        confidences = probabilities.max(axis=-1)[layers]
        return cls(tuple(int(layer) for layer in layers), tuple(float(p) for p in confidences))


@dataclass
class ExitStats:
    """Running training statistics of an ingest: per-exit accuracy and the oracle share."""

    num_exits: int
    examples: int = 0
    with_correct_exit: int = 0

    def __post_init__(self) -> None:
        self.correct_per_exit = np.zeros(self.num_exits, dtype=np.int64)

    def add(self, info: ExitInfo) -> None:
        self.examples += 1
        self.with_correct_exit += bool(info.layers)
        self.correct_per_exit[list(info.layers)] += 1

    def accuracy_per_exit(self) -> list[float]:
        if self.examples == 0:
            return [0.0] * self.num_exits
        return [100.0 * float(c) / self.examples for c in self.correct_per_exit]

    def merge(self, other: ExitStats) -> None:
        """Add another part's counts (the shards of a sharded ingest)."""
        if other.num_exits != self.num_exits:
            raise ValueError(f"cannot merge stats of {other.num_exits} exits into {self.num_exits}")
        self.examples += other.examples
        self.with_correct_exit += other.with_correct_exit
        self.correct_per_exit += other.correct_per_exit

    def counts(self) -> dict[str, object]:
        return {
            "num_exits": self.num_exits,
            "examples": self.examples,
            "with_correct_exit": self.with_correct_exit,
            "correct_per_exit": self.correct_per_exit.tolist(),
        }

    @classmethod
    def from_counts(cls, counts: dict[str, object]) -> ExitStats:
        stats = cls(num_exits=int(counts["num_exits"]))  # type: ignore[call-overload]
        stats.examples = int(counts["examples"])  # type: ignore[call-overload]
        stats.with_correct_exit = int(counts["with_correct_exit"])  # type: ignore[call-overload]
        stats.correct_per_exit = np.asarray(counts["correct_per_exit"], dtype=np.int64)
        return stats

    def to_dict(self) -> dict[str, object]:
        per_exit = self.accuracy_per_exit()
        return {
            "counts": self.counts(),
            "examples": self.examples,
            "with_correct_exit_pct": 100.0 * self.with_correct_exit / max(self.examples, 1),
            "accuracy_per_exit_pct": per_exit,
            "full_model_accuracy_pct": per_exit[-1],
            # The cheapest exit with the best train accuracy: where the worker answers
            # while retrieval is down (degraded), instead of at full depth.
            "best_exit": best_exit(per_exit) if self.examples else None,
        }


def best_exit(accuracy_per_exit_pct: Sequence[float]) -> int | None:
    """The first (cheapest) exit with the highest accuracy; None without any measurement."""
    if not accuracy_per_exit_pct:
        return None
    best = max(accuracy_per_exit_pct)
    return next(i for i, accuracy in enumerate(accuracy_per_exit_pct) if accuracy == best)
