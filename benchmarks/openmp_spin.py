"""torch's OpenMP threads spinning after a forward pass, and what it costs the query encoder.

After each parallel region, libgomp (torch's OpenMP runtime on Linux) lets its idle
threads spin for ``GOMP_SPINCOUNT`` iterations (300,000 unless set) before they
sleep. In a serving process the query encoder, the store and gRPC run between
forward passes, on the cores those threads spin on. ``raee`` sets 10,000 unless the
variable is already set (``raee/__init__.py``). libgomp reads it once, when torch
loads it, so each spin count runs in its own child process: per round, one child
per count, in alternating order. Each child loads the default backbone and the
query encoder as the services share them (``spin="lone"``) and, for each of
``--texts`` SST-2 test texts under the paper's template, times:

- ``full``: a forward pass to the last exit, batch 1;
- ``shallow``: a forward pass to exit 1, batch 1;
- ``encode_after_forward``: the text's prompt key, right after a forward pass;
- ``encode_rested``: the same key after 50 ms without work;

then, ``BATCH_REPEATS`` times, ``full_batch16``: a forward pass of 16 texts to the
last exit, and ingest's step for the same 16 (``ingest.job.probe_batch``): every
exit's prediction (``ingest_forward``), then the batch's keys right after it
(``ingest_encode``). Medians per
child; per count the median over rounds, and each count's ratio to the first
count's, round by round (median).

    python benchmarks/openmp_spin.py --out docs/results/openmp_spin.json

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, read_valid, timed

TIMES = (
    "full",
    "shallow",
    "encode_after_forward",
    "encode_rested",
    "full_batch16",
    "ingest_forward",
    "ingest_encode",
)
BATCH = 16
BATCH_REPEATS = 6


def child(args: argparse.Namespace) -> dict[str, float]:
    """The spin count this process was started with, and its medians."""
    from evaluation.runner import benchmark_tasks
    from ingest.job import probe_batch
    from raee.backbone import Backbone
    from raee.defaults import DEFAULT_BACKBONE
    from raee.encoder import QueryEncoder

    (task,) = benchmark_tasks(args.data_root, ["paper"], ["sst2"])
    probe = Backbone.load(DEFAULT_BACKBONE).for_task(task.spec)
    encoder = QueryEncoder(spin="lone")
    examples = read_valid(task.test, task.spec, args.texts + BATCH)
    texts = [e.text for e in examples]
    last = probe.num_layers
    for text in texts[:3]:  # warm-up
        probe.predict_at([text], last)
        encoder.encode([task.spec.key_text(text)])
    times: dict[str, list[float]] = {name: [] for name in TIMES}
    for text in texts[: args.texts]:
        key = task.spec.key_text(text)
        times["full"].append(timed(partial(probe.predict_at, [text], last))[1])
        times["encode_after_forward"].append(timed(partial(encoder.encode, [key]))[1])
        times["shallow"].append(timed(partial(probe.predict_at, [text], 1))[1])
        time.sleep(0.05)
        times["encode_rested"].append(timed(partial(encoder.encode, [key]))[1])
    for _ in range(BATCH_REPEATS):
        times["full_batch16"].append(timed(partial(probe.predict_at, texts[-BATCH:], last))[1])
        # Ingest's own step: every exit's prediction for a batch, then the batch's keys.
        steps = {"forward_s": 0.0, "encode_s": 0.0}
        probe_batch(probe, encoder, task.spec, examples[-BATCH:], steps)
        times["ingest_forward"].append(1000 * steps["forward_s"])
        times["ingest_encode"].append(1000 * steps["encode_s"])
    medians = {name: float(np.median(values)) for name, values in times.items()}
    return {"spin_count": int(os.environ["GOMP_SPINCOUNT"]), **medians}


def run_child(args: argparse.Namespace, spin_count: int) -> dict[str, float]:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--texts",
        str(args.texts),
        "--data-root",
        str(args.data_root),
    ]
    env = {**os.environ, "GOMP_SPINCOUNT": str(spin_count)}
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    report = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    seen = report.pop("spin_count")
    if seen != spin_count:
        raise RuntimeError(f"the child ran with GOMP_SPINCOUNT={seen}, not {spin_count}")
    return report


def run(args: argparse.Namespace) -> dict[str, Any]:
    counts: list[int] = args.spin_count
    rounds: dict[int, list[dict[str, float]]] = {count: [] for count in counts}
    for round_ in range(args.rounds):
        for count in counts if round_ % 2 == 0 else counts[::-1]:
            rounds[count].append(run_child(args, count))
            print(f"round {round_ + 1}, GOMP_SPINCOUNT={count}: {rounds[count][-1]}", file=sys.stderr)
    base = counts[0]
    return {
        "texts": args.texts,
        "rounds": args.rounds,
        "times_ms": {
            str(count): {name: float(np.median([r[name] for r in rounds[count]])) for name in TIMES}
            for count in counts
        },
        f"over_{base}": {
            str(count): {
                name: float(
                    np.median([a[name] / b[name] for a, b in zip(rounds[count], rounds[base], strict=True)])
                )
                for name in TIMES
            }
            for count in counts[1:]
        },
        "per_round_ms": {str(count): rounds[count] for count in counts},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--texts", type=int, default=30, help="test texts timed per child")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--spin-count", type=int, action="append", help="repeatable; default: 300000 (libgomp's) and 10000"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    args.spin_count = args.spin_count or [300_000, 10_000]
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
