"""Throughput under concurrent clients with one micro-batch in flight against two.

With two batches in flight (``RAEE_BATCHES_IN_FLIGHT``) a RAEE batch's retrieval
call runs while the previous batch's forward pass does; a batch with nothing to
wait for first (FULL, FIXED) still queues behind the running one and keeps
filling. For each task/template pair this serves the eval's pair of services on
the embedded store, then runs rounds of ``--clients`` callers (the eval's
:func:`~evaluation.runner.clients_rate`) in RAEE and FULL mode, switching the
batcher between one and two batches in flight round by round, in alternating
order. It reports each setting's median requests/s per mode, RAEE ÷ FULL (the
eval's ``throughput_ratio_16``) and two ÷ one per mode.

    python benchmarks/batches_in_flight.py --pair cloze/mr --pair paper/sst2 \\
        --out docs/results/batches_in_flight.json

Pairs are ingested as ``raee eval`` ingests them (``--train-limit``), or reused
from ``--home`` when already there. Prints one JSON object (also written to
``--out`` when given).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from _common import emit, eval_pair, load_parser, settings_report

from raee_cli.pair import ServicePair

SETTINGS = (1, 2)


def in_flight(pair: ServicePair, batches: int) -> str:
    pair.inference.batcher.max_in_flight = batches  # read before each batch starts
    return pair.inference_address


async def run(args: Any) -> dict[str, Any]:
    async with eval_pair(args) as (pair, tasks):
        settings = {str(k): functools.partial(in_flight, pair, k) for k in SETTINGS}
        return await settings_report(args, tasks, settings, "two_over_one")


def main() -> None:
    args = load_parser(__doc__).parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
