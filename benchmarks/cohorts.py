"""Throughput under concurrent clients with the batcher merging cohorts, and without.

Clients that send their next request as soon as they have an answer settle into
cohorts that take turns when a batch leaves as soon as it is as large as the
previous one: the eval's 16 callers into two batches of about 8. The batcher
now also counts the requests open at once and waits (up to ``RAEE_MAX_WAIT_MS``)
for the callers of the batch that just finished, so the cohorts merge into one
batch of 16 (``inference_service/batcher.py``, "Whole cohorts"). For each
task/template pair this serves the eval's pair of services on the embedded
store and runs rounds of ``--clients`` callers (the eval's
:func:`~evaluation.runner.clients_rate`) in RAEE and FULL mode, switching the
rule on and off round by round, in alternating order. It reports each setting's
median requests/s per mode, RAEE ÷ FULL (the eval's ``throughput_ratio_16``)
and on ÷ off per mode.

    python benchmarks/cohorts.py --pair cloze/mr --pair paper/cola \\
        --out docs/results/cohorts.json

Pairs are ingested as ``raee eval`` ingests them (``--train-limit``), or reused
from ``--home`` when already there. Prints one JSON object (also written to
``--out`` when given).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
from _common import LOAD_MODES, emit, eval_pair, interleaved_rates, load_parser, load_texts

from raee_cli.pair import ServicePair

SETTINGS = ("off", "on")


def merging(pair: ServicePair, on: bool) -> None:
    pair.inference.batcher.merge_cohorts = on  # read as each batch fills


async def run(args: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "clients": args.clients,
        "per_client": args.per_client,
        "rounds": args.rounds,
        "train_limit": args.train_limit,
        "pairs": {},
    }
    async with eval_pair(args) as (pair, tasks):
        for task in tasks:
            texts = load_texts(task, args.clients * args.per_client)
            settings = {name: functools.partial(merging, pair, name == "on") for name in SETTINGS}
            median = await interleaved_rates(pair, task.spec.name, texts, settings, args)
            report["pairs"][f"{task.family}/{task.task}"] = {
                "rps": {k: {m: round(median[k][m], 2) for m in LOAD_MODES} for k in SETTINGS},
                "raee_over_full": {k: round(median[k]["raee"] / median[k]["full"], 3) for k in SETTINGS},
                "on_over_off": {m: round(median["on"][m] / median["off"][m], 3) for m in LOAD_MODES},
            }
    pairs = report["pairs"].values()
    report["mean"] = {
        "raee_over_full": {
            k: round(float(np.mean([p["raee_over_full"][k] for p in pairs])), 3) for k in SETTINGS
        },
        "on_over_off": {
            m: round(float(np.mean([p["on_over_off"][m] for p in pairs])), 3) for m in LOAD_MODES
        },
    }
    return report


def main() -> None:
    args = load_parser(__doc__).parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
