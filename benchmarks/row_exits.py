"""One pass whose rows leave at their own exits, against one pass per exit, on micro-batches like the eval's.

The worker runs each task's share of a micro-batch as one forward pass in which
every row leaves at its own exit (``TaskProbe.predict_rows``). Before, it ran one
pass per distinct exit (``predict_tokens`` per group), which reads every layer's
weights once per exit that needs the layer. For each of the eval's twelve
task/template pairs this draws micro-batches of test prompts, gives each row an
exit drawn from RAEE's exit histogram for that pair (``--details``, the eval's
``details.json``), and times both ways on the same batches, alternating which
goes first. Both must give the same answers (atol 1e-4). ``ratio`` is the median
over batches of one-pass time ÷ per-exit time; ``ratio_one_pass`` the same over the
batches with two or more exits above the embeddings, the only ones that
``predict_rows`` runs as one pass.

    python benchmarks/row_exits.py --out docs/results/row_exits.json

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, read_valid, timed

from evaluation.runner import benchmark_tasks
from raee.backbone import Backbone, TaskProbe
from raee.defaults import DEFAULT_BACKBONE

FAMILIES = ("paper", "cloze")
TASKS = ("sst2", "sst5", "mr", "cr", "trec", "cola")
SEED = 11


def time_pair(
    probe: TaskProbe,
    ids: list[list[int]],
    histogram: list[int],
    size: int,
    batches: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    weights = np.array(histogram, dtype=float) / sum(histogram)
    samples: dict[str, list[float]] = {"rows": [], "per_exit": []}
    deep_exits, max_diff = [], 0.0
    for batch in range(batches + 1):  # the first batch warms up and is not kept
        chosen = rng.choice(len(ids), size=size, replace=False)
        batch_ids = [ids[i] for i in chosen]
        exits = [int(e) for e in rng.choice(len(weights), size=size, p=weights)]
        order = ("rows", "per_exit") if batch % 2 else ("per_exit", "rows")
        ways = {
            "rows": partial(probe.predict_rows, batch_ids, exits),
            "per_exit": partial(probe.predict_per_exit, batch_ids, exits),  # the previous worker's way
        }
        got: dict[str, np.ndarray] = {}
        for way in order:
            got[way], ms = timed(ways[way])
            if batch:
                samples[way].append(ms)
        max_diff = max(max_diff, float(np.abs(got["rows"] - got["per_exit"]).max()))
        if batch:
            deep_exits.append(len(set(exits) - {0}))
    if max_diff > 1e-4:
        raise AssertionError(f"{probe.spec.name}: the two ways disagree by {max_diff}")
    p50 = {way: float(np.median(values)) for way, values in samples.items()}
    ratios = [a / b for a, b in zip(samples["rows"], samples["per_exit"], strict=True)]
    # predict_rows itself runs one pass per exit below two exits above the embeddings.
    one_pass = [r for r, deep in zip(ratios, deep_exits, strict=True) if deep >= 2]
    return {
        "p50_ms": {way: round(ms, 2) for way, ms in p50.items()},
        # Batches differ in depth by far more than the two ways do: compare within each batch.
        "ratio": round(float(np.median(ratios)), 3),
        "one_pass_batches": len(one_pass),
        "ratio_one_pass": round(float(np.median(one_pass)), 3) if one_pass else None,
        "exits_above_0_mean": round(float(np.mean(deep_exits)), 2),
        "max_abs_diff": max_diff,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--details", type=Path, default=Path("docs/results/details.json"))
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--pair", action="append", help="family/task (default: the twelve)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="micro-batch sizes")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per pair and size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    details = json.loads(args.details.read_text())
    pairs = [p.split("/") for p in args.pair] if args.pair else [[f, t] for f in FAMILIES for t in TASKS]
    backbone = Backbone.load(DEFAULT_BACKBONE)
    rng = np.random.default_rng(SEED)
    report: dict[str, Any] = {"backbone": DEFAULT_BACKBONE, "drops_rows": backbone.drops_rows, "pairs": {}}
    for family, task in pairs:
        (eval_task,) = benchmark_tasks(args.data_root, [family], [task])
        probe = backbone.for_task(eval_task.spec)
        ids = probe.tokenize([e.text for e in read_valid(eval_task.test, eval_task.spec, 256)])
        histogram = details[family][task]["raee_exit_histogram"]
        report["pairs"][f"{family}/{task}"] = {
            str(size): time_pair(probe, ids, histogram, size, args.batches, rng) for size in args.sizes
        }
    report["ratio_mean"] = {
        str(size): round(float(np.mean([p[str(size)]["ratio"] for p in report["pairs"].values()])), 3)
        for size in args.sizes
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
