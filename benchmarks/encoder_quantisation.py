"""Would an int8 query encoder keep RAEE's accuracy? Speed, neighbours and each pair's score.

ONNX Runtime's dynamic int8 quantisation (per-channel weights) of the fp32 graph
runs faster on one query, but it moves the vectors. It quantises the graph as
traced, before fusion (the quantiser's shape inference cannot type the fused
graph's contrib operators); fp32 is the cached, fused export the services run.
This script measures, for each task/template pair of the eval, what int8 does to RAEE:

* ``encode_p50_ms``: one prompt key at a time, fp32 and int8 interleaved;
* ``neighbour_overlap``: the share of each test query's top-k neighbours that
  both encoders retrieve, over the pair's stored examples (keys re-embedded by
  each encoder);
* ``score``: RAEE's task metric with each encoder's neighbours. The exit rule is
  the services' own (:func:`raee.exit_rule.choose_exit`); the prediction at an
  exit is the backbone's at that exit, so only the queries whose exit moves can
  change their answer. The fp32 column reproduces the eval's RAEE score.

Issue 11 accepts a cheaper encoder only if RAEE stays within 0.5 points on every
pair. The pairs must be ingested in ``--home`` as ``make results`` leaves them
(``--train-limit 2000``)::

    python benchmarks/encoder_quantisation.py --out docs/results/encoder_quantisation.json
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, encoder_running, read_valid

from evaluation.runner import EvalTask, benchmark_tasks, folder_task
from raee import encoder_onnx
from raee.backbone import Backbone, TaskProbe
from raee.defaults import DEFAULT_BACKBONE
from raee.encoder import QueryEncoder
from raee.exit_rule import DEFAULT_K, choose_exit
from raee.store import ExitStore, Neighbour, open_store

Encode = Callable[[Sequence[str]], np.ndarray]
TOLERANCE_POINTS = 0.5


def int8_copy(reference: QueryEncoder, folder: Path) -> Path:
    """The int8 graph: ``reference``'s model traced as before fusion, then quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert reference.model is not None
    fp32, target = folder / "model.traced.onnx", folder / "model.int8.onnx"
    encoder_onnx.trace(reference.model, fp32, attention="sdpa")
    quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return target


def stored_examples(store: ExitStore, task: str, dim: int) -> list[Neighbour]:
    """Every stored example of the task (one exact query whose k is the task's size)."""
    points = store.get_task(task).points
    probe = np.zeros((1, dim), dtype=np.float32)
    probe[0, 0] = 1.0
    found = store.search(task, probe, points).neighbours[0]
    if len(found) != points:
        raise SystemExit(f"{task}: read {len(found)} of {points} stored examples")
    return found


def exits_of(
    queries: np.ndarray, keys: np.ndarray, stored: list[Neighbour], num_layers: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """RAEE's exit per query and its top-k neighbour indices, as the services compute them."""
    similarity = queries @ keys.T
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    exits = []
    for row, sims in zip(top, similarity, strict=True):
        neighbours = [dataclasses.replace(stored[j], similarity=float(sims[j])) for j in row]
        exits.append(choose_exit(neighbours, num_layers).exit_layer)
    return np.array(exits), top


def predictions(probe: TaskProbe, texts: Sequence[str], exits: np.ndarray, batch: int = 16) -> np.ndarray:
    out = np.empty(len(texts), dtype=np.int64)
    for layer in np.unique(exits):
        rows = np.flatnonzero(exits == layer)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            out[chunk] = probe.predict_at([texts[i] for i in chunk], int(layer)).argmax(axis=-1)
    return out


def batch1_p50(ways: dict[str, Encode], texts: Sequence[str]) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in ways}
    for text in texts:
        for name, encode in ways.items():
            started = time.perf_counter()
            encode([text])
            times[name].append(1000 * (time.perf_counter() - started))
    return {name: round(float(np.median(values)), 3) for name, values in times.items()}


def measure_pair(
    task: EvalTask, probe: TaskProbe, store: ExitStore, ways: dict[str, Encode], timing_texts: int
) -> dict[str, Any]:
    spec = task.spec
    tests = read_valid(task.test, spec)
    texts = [e.text for e in tests]
    gold = np.array([e.label_index for e in tests])
    stored = stored_examples(store, spec.name, next(iter(ways.values()))(["x"]).shape[1])
    train_keys = [spec.key_text(n.text) for n in stored]
    test_keys = [spec.key_text(t) for t in texts]
    exits, tops = {}, {}
    for name, encode in ways.items():
        queries, keys = encode(test_keys), encode(train_keys)
        exits[name], tops[name] = exits_of(queries, keys, stored, probe.num_layers, DEFAULT_K)
    fp32, int8 = ways
    same = np.flatnonzero(exits[fp32] == exits[int8])
    moved = np.flatnonzero(exits[fp32] != exits[int8])
    shared = predictions(probe, [texts[i] for i in same], exits[fp32][same])
    scores = {}
    for name in ways:
        predicted = np.empty(len(texts), dtype=np.int64)
        predicted[same] = shared
        predicted[moved] = predictions(probe, [texts[i] for i in moved], exits[name][moved])
        scores[name] = round(spec.metric.score(predicted, gold), 2)
    overlap = np.mean([len(set(a) & set(b)) / DEFAULT_K for a, b in zip(tops[fp32], tops[int8], strict=True)])
    return {
        "test_examples": len(texts),
        "stored_examples": len(stored),
        "score": scores,
        "delta": round(scores[int8] - scores[fp32], 2),
        "exits_moved": round(len(moved) / len(texts), 4),
        "avg_exit": {name: round(float(exits[name].mean()), 3) for name in ways},
        "neighbour_overlap": round(float(overlap), 4),
        "encode_p50_ms": batch1_p50(ways, test_keys[:timing_texts]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-root", type=Path, default=Path("benchmarks/data"))
    parser.add_argument("--home", type=Path, default=Path(".raee"), help="the store with the eval's pairs")
    parser.add_argument("--families", nargs="+", default=["paper", "cloze"])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "sst5", "mr", "cr", "trec", "cola"])
    parser.add_argument(
        "--task-dir", type=Path, action="append", default=[], help="task.yaml + train/test.jsonl instead"
    )
    parser.add_argument("--timing-texts", type=int, default=100, help="queries timed per pair and encoder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    encoder = QueryEncoder()
    backbone = Backbone.load(DEFAULT_BACKBONE)
    store = open_store(home=args.home)
    pairs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        ways: dict[str, Encode] = {
            "fp32": encoder.encode,
            "int8": encoder_running(encoder, int8_copy(QueryEncoder(runtime="torch"), Path(folder))).encode,
        }
        tasks = [folder_task(folder) for folder in args.task_dir] or benchmark_tasks(
            args.data_root, args.families, args.tasks
        )
        for task in tasks:
            pairs[f"{task.family}/{task.task}"] = measure_pair(
                task, backbone.for_task(task.spec), store, ways, args.timing_texts
            )
            print(f"{task.family}/{task.task}: {pairs[f'{task.family}/{task.task}']}", flush=True)
    store.close()
    emit(
        {
            "encoder": encoder.id,
            "quantisation": "onnxruntime quantize_dynamic: int8 weights per channel, uint8 activations",
            "tolerance_points": TOLERANCE_POINTS,
            "pairs": pairs,
            "summary": summary(pairs),
        },
        args.out,
    )


def summary(pairs: dict[str, Any]) -> dict[str, Any]:
    deltas = {name: pair["delta"] for name, pair in pairs.items()}
    speed = [p["encode_p50_ms"]["int8"] / p["encode_p50_ms"]["fp32"] for p in pairs.values()]
    worst = max(deltas, key=lambda name: abs(deltas[name]))
    return {
        "encode_speed_ratio_int8_over_fp32": round(float(np.mean(speed)), 3),
        "neighbour_overlap": round(float(np.mean([p["neighbour_overlap"] for p in pairs.values()])), 4),
        "pairs_outside_tolerance": sorted(name for name, d in deltas.items() if abs(d) > TOLERANCE_POINTS),
        "largest_change": {"pair": worst, "delta": deltas[worst]},
    }


if __name__ == "__main__":
    main()
