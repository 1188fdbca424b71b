"""What a truncated forward pass costs over rows × depth: is sharing a pass worth it?

The worker used to run one pass per (task, exit layer) group. Passes could instead
be shared by requests with nearby exits, padded to the deepest, if a layer cost
much the same over a few rows as over one (a pass bound by reading weights).
(Today rows share one pass but leave it at their own exits, which pays no layer
twice and no row above its exit: ``benchmarks/row_exits.py``.)
This times ``predict_tokens`` on the backbone over a grid of rows and depths and
fits ``time = pass + depth * (layer + rows * row)``: ``layer / row`` is what a
layer costs beside its rows, in rows. Near 0, batching rows buys nothing and
exact-exit groups are the cheapest split; large, sharing would pay.

    python benchmarks/forward_passes.py --out docs/results/forward_passes.json

prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
from _common import emit, read_valid

from raee.backbone import Backbone
from raee.defaults import DEFAULT_BACKBONE
from raee.tasks import TaskSpec

ROWS = (1, 2, 4, 8, 16)
DEPTHS = (0, 2, 6, 12, 18)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spec", type=Path, default=Path("evaluation/tasks/paper/sst2.yaml"))
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data/sst2/test.jsonl"))
    parser.add_argument("--repeats", type=int, default=5, help="timings per grid cell, after a warm-up")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    spec = TaskSpec.from_file(args.spec)
    probe = Backbone.load(DEFAULT_BACKBONE).for_task(spec)
    ids = probe.tokenize([e.text for e in read_valid(args.data, spec, max(ROWS))])
    grid = list(itertools.product(ROWS, DEPTHS))
    samples: dict[tuple[int, int], list[float]] = {cell: [] for cell in grid}
    for repeat in range(args.repeats + 1):
        for rows, depth in grid:  # interleaved, so that machine noise hits every cell alike
            started = time.perf_counter()
            probe.predict_tokens(ids[:rows], depth)
            if repeat:
                samples[(rows, depth)].append(1000 * (time.perf_counter() - started))
    p50 = {cell: float(np.median(values)) for cell, values in samples.items()}
    design = np.array([[1.0, depth, depth * rows] for rows, depth in grid])
    (pass_ms, layer_ms, row_ms), *_ = np.linalg.lstsq(design, np.array([p50[c] for c in grid]), rcond=None)
    emit(
        {
            "backbone": DEFAULT_BACKBONE,
            "prompt_tokens_mean": round(float(np.mean([len(row) for row in ids])), 1),
            "fit_ms": {"pass": round(pass_ms, 3), "layer": round(layer_ms, 3), "row_layer": round(row_ms, 3)},
            "layer_cost_in_rows": round(float(layer_ms / row_ms), 3),
            "per_row_ms_at_full_depth": {rows: round(p50[(rows, 18)] / rows, 2) for rows in ROWS},
            "p50_ms": {f"{rows}x{depth}": round(ms, 2) for (rows, depth), ms in p50.items()},
        },
        args.out,
    )


if __name__ == "__main__":
    main()
