"""How the worker splits a micro-batch into truncated forward passes, measured on the backbone.

1. The cost model: ``predict_rows`` timed over ``rows`` × ``depth``, fitted to
   ``time = pass + depth * (layer + rows * row)``; reports ``LAYER_COST = layer / row``
   and ``PASS_COST = pass / row``, the constants of ``inference_service/passes.py``.
2. The split itself: micro-batches of 16 exits drawn (seeded) from each task's RAEE
   exit histogram in a results file, run three ways, interleaved batch by batch:
   one pass per exit layer (the worker before), the planned passes (now), and one
   pass to the deepest exit. Reported per task as time over the per-exit time.

    python benchmarks/forward_passes.py --results docs/results/details.json

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, read_valid

from inference_service.passes import LAYER_COST, PASS_COST, plan_passes
from raee.backbone import Backbone, TaskProbe
from raee.defaults import DEFAULT_BACKBONE
from raee.tasks import TaskSpec

SPEC = Path("evaluation/tasks/paper/sst2.yaml")
Split = Callable[[list[int]], list[list[int]]]


def timed(probe: TaskProbe, ids: Sequence[list[int]], exits: Sequence[int], split: Split) -> float:
    started = time.perf_counter()
    for run in split(list(exits)):
        probe.predict_rows([ids[i] for i in run], [exits[i] for i in run])
    return 1000 * (time.perf_counter() - started)


def cost_model(probe: TaskProbe, ids: list[list[int]], repeats: int) -> dict[str, Any]:
    one_pass: Split = lambda exits: [list(range(len(exits)))]  # noqa: E731
    grid = list(itertools.product((1, 2, 4, 8, 16), (0, 2, 6, 12, 18)))
    samples: dict[tuple[int, int], list[float]] = {cell: [] for cell in grid}
    for repeat in range(repeats + 1):
        for rows, depth in grid:
            ms = timed(probe, ids[:rows], [depth] * rows, one_pass)
            if repeat:  # the first round warms up
                samples[(rows, depth)].append(ms)
    medians = {cell: float(np.median(values)) for cell, values in samples.items()}
    # time = pass + depth * layer + depth * rows * row, by least squares
    design = np.array([[1.0, depth, depth * rows] for rows, depth in grid])
    times = np.array([medians[cell] for cell in grid])
    (pass_ms, layer_ms, row_ms), *_ = np.linalg.lstsq(design, times, rcond=None)
    return {
        "pass_ms": round(float(pass_ms), 3),
        "layer_ms": round(float(layer_ms), 3),
        "row_layer_ms": round(float(row_ms), 3),
        "layer_cost": round(float(layer_ms / row_ms), 2),
        "pass_cost": round(float(pass_ms / row_ms), 2),
        "p50_ms": {f"{rows}x{depth}": round(ms, 2) for (rows, depth), ms in medians.items()},
    }


def splits() -> dict[str, Split]:
    def per_exit(exits: list[int]) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for index, exit_layer in enumerate(exits):
            groups.setdefault(exit_layer, []).append(index)
        return list(groups.values())

    return {
        "per_exit": per_exit,
        "planned": plan_passes,
        "one_pass": lambda exits: [list(range(len(exits)))],
    }


def compare(
    probe: TaskProbe, ids: list[list[int]], histograms: dict[str, list[int]], batches: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ways = splits()
    report: dict[str, Any] = {}
    for name, histogram in histograms.items():
        weights = np.array(histogram, dtype=float) / sum(histogram)
        times: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(batches):
            exits = [int(e) for e in rng.choice(len(histogram), size=16, p=weights)]
            texts = [ids[int(i)] for i in rng.choice(len(ids), size=16, replace=False)]
            for way, split in ways.items():
                times[way].append(timed(probe, texts, exits, split))
        per_exit = float(np.median(times["per_exit"]))
        report[name] = {
            "mean_exit": round(float(np.dot(weights, np.arange(len(histogram)))), 2),
            "p50_ms": {way: round(float(np.median(values)), 2) for way, values in times.items()},
            "ratio_to_per_exit": {
                way: round(float(np.median(values)) / per_exit, 3) for way, values in times.items()
            },
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=Path("docs/results/details.json"))
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data/sst2/test.jsonl"))
    parser.add_argument("--batches", type=int, default=6, help="micro-batches per task and way")
    parser.add_argument("--repeats", type=int, default=3, help="timings per cost-model cell")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = TaskSpec.from_file(SPEC)
    probe = Backbone.load(DEFAULT_BACKBONE).for_task(spec)
    ids = probe.tokenize([e.text for e in read_valid(args.data, spec, 64)])
    details = json.loads(args.results.read_text())
    histograms = {
        f"{family}/{task}": result["raee_exit_histogram"]
        for family, tasks in details.items()
        for task, result in tasks.items()
    }
    emit(
        {
            "backbone": DEFAULT_BACKBONE,
            "prompt_tokens_mean": round(float(np.mean([len(row) for row in ids])), 1),
            "constants_in_use": {"layer_cost": LAYER_COST, "pass_cost": PASS_COST},
            "cost_model": cost_model(probe, ids, args.repeats),
            "micro_batches_of_16": compare(probe, ids, histograms, args.batches, args.seed),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
