"""The truncated forward pass: torch eager against ``torch.compile``, at batch 1 and 16.

The worker runs the backbone only up to the chosen exit (``TaskProbe.predict_at``:
forward hooks stop the pass after that layer). This benchmark times that call in
eager mode and with every decoder layer's ``forward`` compiled by ``torch.compile``
(the hooks that stop the pass stay in eager mode, around the compiled layers), at
several exits and at batch 1 and 16, the two runs alternating call by call so that
machine noise hits both alike. It also checks that compiled is exact: the label
probabilities at every timed exit equal eager's within ``--atol``.

    python benchmarks/truncated_forward.py --out docs/results/truncated_forward.json

An ONNX Runtime path is not timed: exporting the hook-truncated pass means one graph
per exit, and at batch 1 on a CPU the pass is bound by reading the weights, which
no runtime avoids.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import emit, read_valid

from raee.backbone import Backbone, TaskProbe
from raee.defaults import DEFAULT_BACKBONE
from raee.tasks import TaskSpec

EXITS = (1, 6, 12, 18)
BATCHES = (1, 16)


def compile_layers(backbone: Backbone) -> None:
    """Compile each decoder layer's forward in place; the hooks around them stay eager."""
    for layer in backbone.layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)


def time_call(probe: TaskProbe, texts: list[str], layer: int, samples: list[float]) -> None:
    started = time.perf_counter()
    probe.predict_at(texts, layer)
    samples.append(1000 * (time.perf_counter() - started))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    eager = Backbone.load(args.backbone)
    compiled = Backbone.load(args.backbone)
    compile_layers(compiled)
    spec = TaskSpec.from_file(args.spec)
    texts = [e.text for e in read_valid(args.data, spec, limit=args.texts)]
    probes = {"eager": eager.for_task(spec), "compiled": compiled.for_task(spec)}
    started = time.perf_counter()
    for batch in BATCHES:  # compile (and warm) every shape class before timing
        for layer in EXITS:
            probes["compiled"].predict_at(texts[:batch], layer)
    compile_s = time.perf_counter() - started
    exact = check_exact(probes, texts, args.atol)
    report: dict[str, Any] = {"compile_s": round(compile_s, 1), "exact": exact}
    for batch in BATCHES:
        for layer in EXITS:
            report[f"b{batch}_exit{layer}"] = time_pair(probes, texts, batch, layer, args.rounds)
    ratios = [v["compiled_over_eager"] for k, v in report.items() if k.startswith("b")]
    report["compiled_over_eager_median"] = round(float(np.median(ratios)), 3)
    report["command"] = "python benchmarks/truncated_forward.py " + " ".join(args.argv)
    return report


def check_exact(probes: dict[str, TaskProbe], texts: Sequence[str], atol: float) -> dict[str, Any]:
    """Largest difference of label probabilities, compiled against eager, over every timed exit."""
    worst = 0.0
    for layer in EXITS:
        batch = list(texts[:16])
        diff = np.abs(probes["compiled"].predict_at(batch, layer) - probes["eager"].predict_at(batch, layer))
        worst = max(worst, float(diff.max()))
    return {"max_abs_diff": worst, "atol": atol, "within_atol": worst <= atol}


def time_pair(
    probes: dict[str, TaskProbe], texts: Sequence[str], batch: int, layer: int, rounds: int
) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in probes}
    for r in range(rounds):
        chunk = [texts[(r * batch + i) % len(texts)] for i in range(batch)]
        order = list(probes) if r % 2 == 0 else list(reversed(probes))
        for name in order:
            time_call(probes[name], chunk, layer, samples[name])
    p50 = {name: float(np.median(values)) for name, values in samples.items()}
    return {
        "eager_p50_ms": round(p50["eager"], 2),
        "compiled_p50_ms": round(p50["compiled"], 2),
        "compiled_over_eager": round(p50["compiled"] / p50["eager"], 3),
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE)
    parser.add_argument("--spec", type=Path, default=Path("evaluation/tasks/cloze/sst2.yaml"))
    parser.add_argument("--data", type=Path, default=Path("benchmarks/data/sst2/test.jsonl"))
    parser.add_argument("--texts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30, help="timed calls per engine, exit and batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--atol", type=float, default=1e-4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
