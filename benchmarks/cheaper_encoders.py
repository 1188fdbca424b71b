"""Would a cheaper query encoder keep RAEE's accuracy? Speed, neighbours and each pair's score.

The services run MiniLM's fp32 graph, fused and cached (``fp32``). Each candidate
does less arithmetic per query, and each moves the vectors:

* ``int8``: ONNX Runtime's dynamic int8 quantisation (per-channel weights) of the
  graph as traced, before fusion (the quantiser's shape inference cannot type the
  fused graph's contrib operators);
* ``layers<N>``: the same weights, only the first N of the transformer's layers
  (mean pooling and normalisation over layer N's output), exported and fused as
  the services' graph is.

For each task/template pair of the eval and each candidate, this script measures:

* ``encode_p50_ms``: one prompt key at a time, every encoder interleaved;
* ``neighbour_overlap``: the share of each test query's top-k neighbours that
  the candidate and fp32 both retrieve, over the pair's stored examples (keys
  re-embedded by each encoder, as a re-ingest would);
* ``score``: RAEE's task metric with each encoder's neighbours. The exit rule is
  the services' own (:func:`raee.exit_rule.choose_exit`); the prediction at an
  exit is the backbone's at that exit, so only the queries whose exit moves can
  change their answer. The fp32 column reproduces the eval's RAEE score.

Issue 11 accepts a cheaper encoder only if RAEE stays within 0.5 points on every
pair. The pairs must be ingested in ``--home`` as ``make results`` leaves them
(``--train-limit 2000``)::

    python benchmarks/cheaper_encoders.py --out docs/results/cheaper_encoders.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, encoder_running, read_valid
from sentence_transformers import SentenceTransformer

from evaluation.runner import EvalTask, benchmark_tasks, folder_task
from raee import encoder_onnx
from raee.backbone import Backbone, TaskProbe
from raee.defaults import DEFAULT_BACKBONE
from raee.encoder import ONNX_TOLERANCE, QueryEncoder
from raee.exit_rule import DEFAULT_K, choose_exit
from raee.store import ExitStore, Neighbour, open_store

Encode = Callable[[Sequence[str]], np.ndarray]
TOLERANCE_POINTS = 0.5
REFERENCE = "fp32"
DEFAULT_CANDIDATES = ("int8", "layers4", "layers3", "layers2")


def int8_copy(reference: QueryEncoder, folder: Path) -> Path:
    """The int8 graph: ``reference``'s model traced as before fusion, then quantised."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert reference.model is not None
    fp32, target = folder / "model.traced.onnx", folder / "model.int8.onnx"
    encoder_onnx.trace(reference.model, fp32, attention="sdpa")
    quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8, per_channel=True)
    return target


def first_layers_copy(reference: QueryEncoder, layers: int, folder: Path) -> Path:
    """The fused graph of ``reference``'s model cut to its first ``layers`` transformer layers."""
    assert reference.model is not None
    model: SentenceTransformer = copy.deepcopy(reference.model)
    transformer: Any = model[0].auto_model  # a BERT model: its encoder's layers are a ModuleList
    if not 0 < layers < len(transformer.encoder.layer):
        raise SystemExit(f"layers{layers}: the encoder has {len(transformer.encoder.layer)} layers")
    transformer.encoder.layer = transformer.encoder.layer[:layers]
    transformer.config.num_hidden_layers = layers
    target = folder / f"model.layers{layers}.onnx"
    encoder_onnx.trace(model, target)
    encoder_onnx.fuse_if_exact(model, target, tolerance=ONNX_TOLERANCE)
    return target


def candidate_graph(name: str, reference: QueryEncoder, folder: Path) -> Path:
    if name == "int8":
        return int8_copy(reference, folder)
    if name.startswith("layers") and name.removeprefix("layers").isdigit():
        return first_layers_copy(reference, int(name.removeprefix("layers")), folder)
    raise SystemExit(f"unknown candidate {name!r}: int8 or layers<N>")


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


def predictions(
    probe: TaskProbe, texts: Sequence[str], wanted: set[tuple[int, int]], batch: int = 16
) -> dict[tuple[int, int], int]:
    """The backbone's label at each wanted ``(text index, exit)``; texts sharing an exit run batched."""
    labels: dict[tuple[int, int], int] = {}
    for layer in sorted({e for _, e in wanted}):
        rows = sorted(i for i, e in wanted if e == layer)
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            found = probe.predict_at([texts[i] for i in chunk], layer).argmax(axis=-1)
            labels.update({(i, layer): int(label) for i, label in zip(chunk, found, strict=True)})
    return labels


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
    # Each query's prediction at each exit it is sent to, run once however many encoders send it there.
    at_exit = predictions(probe, texts, {(i, int(e[i])) for e in exits.values() for i in range(len(texts))})
    scores = {
        name: round(spec.metric.score([at_exit[(i, int(e[i]))] for i in range(len(texts))], gold), 2)
        for name, e in exits.items()
    }
    candidates = [name for name in ways if name != REFERENCE]

    def overlap(name: str) -> float:
        pairs = zip(tops[REFERENCE], tops[name], strict=True)
        return round(float(np.mean([len(set(a) & set(b)) / DEFAULT_K for a, b in pairs])), 4)

    return {
        "test_examples": len(texts),
        "stored_examples": len(stored),
        "score": scores,
        "delta": {name: round(scores[name] - scores[REFERENCE], 2) for name in candidates},
        "exits_moved": {
            name: round(float(np.mean(exits[name] != exits[REFERENCE])), 4) for name in candidates
        },
        "avg_exit": {name: round(float(exits[name].mean()), 3) for name in ways},
        "neighbour_overlap": {name: overlap(name) for name in candidates},
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
    parser.add_argument(
        "--candidate",
        action="append",
        dest="candidates",
        help=f"int8 or layers<N> (repeatable; default: {' '.join(DEFAULT_CANDIDATES)})",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    encoder = QueryEncoder()
    backbone = Backbone.load(DEFAULT_BACKBONE)
    store = open_store(home=args.home)
    pairs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        reference = QueryEncoder(runtime="torch")
        ways: dict[str, Encode] = {REFERENCE: encoder.encode}
        for name in args.candidates or DEFAULT_CANDIDATES:
            ways[name] = encoder_running(encoder, candidate_graph(name, reference, Path(folder))).encode
        tasks = [folder_task(path) for path in args.task_dir] or benchmark_tasks(
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
            "candidates": {name: describe(name) for name in ways if name != REFERENCE},
            "tolerance_points": TOLERANCE_POINTS,
            "pairs": pairs,
            "summary": summary(pairs),
        },
        args.out,
    )


def describe(name: str) -> str:
    if name == "int8":
        return "onnxruntime quantize_dynamic: int8 weights per channel, uint8 activations"
    return f"the first {name.removeprefix('layers')} transformer layers of the same weights, fp32, fused"


def summary(pairs: dict[str, Any]) -> dict[str, Any]:
    """Per candidate: its speed against fp32, its neighbours in common and the pairs it fails."""
    first = next(iter(pairs.values()))
    report: dict[str, Any] = {}
    for name in first["delta"]:
        deltas = {pair: measured["delta"][name] for pair, measured in pairs.items()}
        speed = [p["encode_p50_ms"][name] / p["encode_p50_ms"][REFERENCE] for p in pairs.values()]
        worst = max(deltas, key=lambda pair: abs(deltas[pair]))
        report[name] = {
            "encode_speed_ratio_over_fp32": round(float(np.mean(speed)), 3),
            "neighbour_overlap": round(
                float(np.mean([p["neighbour_overlap"][name] for p in pairs.values()])), 4
            ),
            "mean_delta": round(float(np.mean(list(deltas.values()))), 2),
            "pairs_outside_tolerance": sorted(
                pair for pair, d in deltas.items() if abs(d) > TOLERANCE_POINTS
            ),
            "largest_change": {"pair": worst, "delta": deltas[worst]},
        }
    return report


if __name__ == "__main__":
    main()
