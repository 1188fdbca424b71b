"""Which requests of a micro-batch share one truncated forward pass.

A pass runs its rows to the deepest of their exits and reads each row at its own
exit (:meth:`raee.backbone.TaskProbe.predict_rows`). Grouping rows by exact exit
wastes no layer, but on a CPU a layer over a few rows costs almost as much as
over many: at small batch the pass is bound by reading the layer's weights. So
rows with nearby exits share a pass when that is cheaper, and rows far shallower
than the rest (exit 0, say) get a pass of their own.

The cost model, in the time of one row through one layer: a pass costs
``PASS_COST`` plus, per layer it runs, ``LAYER_COST`` and one unit per row.
``benchmarks/forward_passes.py`` measures both on the backbone.
"""

from __future__ import annotations

from collections.abc import Sequence

from raee.batching import cheapest_runs

# Gemma-3-270M on 2 CPU cores, prompts of ~40 tokens (benchmarks/forward_passes.py):
LAYER_COST = 2.5  # a layer's cost beside its rows (weights, kernels), in rows
PASS_COST = 3.0  # a pass's cost beside its layers (embedding, head, masks), in row-layers


def plan_passes(
    exits: Sequence[int], layer_cost: float = LAYER_COST, pass_cost: float = PASS_COST
) -> list[list[int]]:
    """Indices of ``exits`` grouped into forward passes of least estimated total cost."""
    return cheapest_runs(exits, lambda rows, depth: pass_cost + depth * (layer_cost + rows))
