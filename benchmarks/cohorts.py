"""Throughput under concurrent clients with the batcher merging cohorts, and without.

Clients that send their next request as soon as they have an answer settle into
cohorts that take turns when a batch leaves as soon as it is as large as the
previous one: the eval's 16 callers into two batches of about 8. The batcher
now also counts the requests open at once and waits (up to ``RAEE_MAX_WAIT_MS``)
for the callers of the batch that just finished, so the cohorts merge into one
batch of 16 (``inference_service/batcher.py``, "Whole cohorts"). For each
task/template pair this serves the eval's pair of services on the embedded
store, with a second worker beside the first that has the rule off, and runs
rounds of ``--clients`` callers (the eval's :func:`~evaluation.runner.clients_rate`)
in RAEE and FULL mode against each worker in turn, in alternating order. Each
worker keeps its own history from round to round, as the eval's one worker does:
once callers have merged, the old rule also keeps them together, so switching one
worker between the rules would mostly time merged cohorts under both. It reports each setting's
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
from collections.abc import Callable
from typing import Any

from _common import emit, eval_pair, load_parser, second_worker, settings_report


def _calling(address: str) -> Callable[[], str]:
    return lambda: address


async def run(args: Any) -> dict[str, Any]:
    async with eval_pair(args) as (pair, tasks), second_worker(pair) as without:
        # Two workers, one per setting, so that each sees the eval's sequence of rounds and
        # keeps its own history (the batch sizes it settled into) from round to round.
        without.batcher.merge_cohorts = False
        addresses = {"off": f"localhost:{without.port}", "on": pair.inference_address}
        settings = {name: _calling(address) for name, address in addresses.items()}
        return await settings_report(args, tasks, settings, "on_over_off")


def main() -> None:
    args = load_parser(__doc__).parse_args()
    emit(asyncio.run(run(args)), args.out)


if __name__ == "__main__":
    main()
