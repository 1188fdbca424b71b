"""Exit store at scale: build time, disk, search latency and recall of tasks of 100k and 1M examples.

For each size this writes a task through the real store API (``begin_version`` /
``add`` / ``publish`` of the embedded store, in a temporary folder), so the
version gets the index of :mod:`raee.store.index` (HNSW over int8 vectors with
rescoring from ``INDEX_THRESHOLD`` points on), then measures:

* ``build_s``: writing plus index build, until the version is published;
* ``bytes_per_point``: allocated disk of the version folder per point, and
  ``serving_rss_bytes_per_point``: this process's resident memory growth per point
  from opening the version and searching it (the graph and int8 vectors it keeps in RAM);
* ``p50_ms`` / ``p99_ms``: top-12 search at batch 1 through ``ExitStore.search``,
  and ``exact_p50_ms``, the same search forced exact (fewer queries: it is slow);
* ``recall_at_12``: the share of the true 12 nearest (numpy brute force over the
  float vectors) that the store returns;
* ``exit_agreement``: the share of queries where :func:`raee.exit_rule.choose_exit`
  over the store's neighbours picks the same exit as over the true neighbours.

The data is synthetic, seeded, and never encoded by a model: 384-d unit vectors
(the size of all-MiniLM-L6-v2's embeddings) from a two-level Gaussian mixture,
``1000`` topic centres with ``16`` sub-centres each plus isotropic noise, so
the index faces clusters within clusters as sentence embeddings do, rather than
uniform noise. Each point's exit information is a run of 1-4 consecutive
correct exits out of 19 (layers 0..18) starting at a layer drawn around its
topic's typical exit, with confidences rising along the run, sometimes joined by
the full model's exit; texts are ~100 characters. Queries are held-out draws from
the same mixture.

    python benchmarks/scale.py                       # 100k and 1M, into docs/results/scale.json
    python benchmarks/scale.py --sizes 100000 --out /tmp/scale.json
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from raee.exit_info import ExitInfo
from raee.exit_rule import DEFAULT_K, choose_exit
from raee.store.base import ExitRecord, Neighbour, VersionMeta
from raee.store.edge import EdgeExitStore
from raee.store.index import DEFAULT_POLICY, IndexPolicy
from raee.tasks import TaskSpec

DIM = 384
NUM_LAYERS = 18  # 19 exits
TOPICS = 1000
SUBTOPICS = 16
WRITE_BATCH = 5000
TASK = "scale"
SPEC = TaskSpec.from_flags(TASK, "{text} It was", ["negative=terrible", "positive=great"])
FILLER = "a synthetic review of about one hundred characters, standing in for a training text " * 2


@dataclass(frozen=True)
class Mixture:
    """The seeded two-level mixture the points and queries are drawn from."""

    topics: np.ndarray  # (TOPICS, DIM)
    subtopics: np.ndarray  # (TOPICS, SUBTOPICS, DIM)
    typical_exit: np.ndarray  # (TOPICS,)

    @classmethod
    def make(cls, seed: int) -> Mixture:
        rng = np.random.default_rng(seed)
        topics = _unit(rng.standard_normal((TOPICS, DIM)))
        subtopics = rng.standard_normal((TOPICS, SUBTOPICS, DIM)) * (0.6 / np.sqrt(DIM))
        return cls(topics, subtopics, rng.integers(2, NUM_LAYERS - 2, TOPICS))

    def draw(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``count`` unit vectors and the topic of each."""
        topic = rng.integers(0, TOPICS, count)
        sub = rng.integers(0, SUBTOPICS, count)
        noise = rng.standard_normal((count, DIM)) * (0.45 / np.sqrt(DIM))
        return _unit(self.topics[topic] + self.subtopics[topic, sub] + noise), topic


def _unit(x: np.ndarray) -> np.ndarray:
    return np.asarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


@dataclass
class Exits:
    """Every point's exit information, as arrays (1M ExitInfo objects would not be cheap)."""

    first: np.ndarray
    span: np.ndarray
    conf: np.ndarray
    full: np.ndarray

    @classmethod
    def draw(cls, mixture: Mixture, topic: np.ndarray, rng: np.random.Generator) -> Exits:
        count = len(topic)
        first = np.clip(mixture.typical_exit[topic] + rng.integers(-2, 3, count), 0, NUM_LAYERS)
        return cls(
            first=first,
            span=rng.integers(1, 5, count),
            conf=rng.uniform(0.5, 0.97, count),
            full=rng.random(count) < 0.3,
        )

    def info(self, i: int) -> ExitInfo:
        first, span, conf = int(self.first[i]), int(self.span[i]), float(self.conf[i])
        layers = list(range(first, min(first + span, NUM_LAYERS + 1)))
        probs = [conf + (0.99 - conf) * step / span for step in range(len(layers))]
        if self.full[i] and layers[-1] != NUM_LAYERS:
            layers.append(NUM_LAYERS)
            probs.append(0.99)
        return ExitInfo(tuple(layers), tuple(round(p, 4) for p in probs))


def record(i: int, vector: np.ndarray, exits: Exits) -> ExitRecord:
    return ExitRecord(
        point_id=i,
        vector=vector,
        example_id=f"synthetic.jsonl:{i + 1}",
        text=f"#{i} " + FILLER[: 96 - len(str(i))],
        label=SPEC.label_names[i % 2],
        label_index=i % 2,
        exit=exits.info(i),
    )


def build(store: EdgeExitStore, vectors: np.ndarray, exits: Exits) -> float:
    """Write all points through the store API and publish; the seconds it took."""
    start = time.perf_counter()
    with store.begin_version(TASK, DIM) as writer:
        for begin in tqdm(range(0, len(vectors), WRITE_BATCH), desc=f"write {len(vectors)}", unit="batch"):
            end = min(begin + WRITE_BATCH, len(vectors))
            writer.add([record(i, vectors[i], exits) for i in range(begin, end)])
        writer.publish(VersionMeta(SPEC, "synthetic/L18", "synthetic-384", NUM_LAYERS))
    return time.perf_counter() - start


def true_neighbours(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids and cosine similarities of each query's ``k`` nearest points, by brute force."""
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    best_sims = np.zeros((len(queries), 0), dtype=np.float32)
    for begin in range(0, len(vectors), 100_000):
        sims = queries @ vectors[begin : begin + 100_000].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        best_ids = np.concatenate([best_ids, top + begin], axis=1)
        best_sims = np.concatenate([best_sims, np.take_along_axis(sims, top, axis=1)], axis=1)
    order = np.argsort(-best_sims, axis=1)[:, :k]
    return np.take_along_axis(best_ids, order, axis=1), np.take_along_axis(best_sims, order, axis=1)


def timed_search(store: EdgeExitStore, queries: np.ndarray, desc: str) -> tuple[list[float], list[Any]]:
    """Milliseconds and neighbours of each query, searched one at a time."""
    store.search(TASK, queries[:1], DEFAULT_K)  # open the version outside the timings
    times, hits = [], []
    for row in tqdm(queries, desc=desc, unit="query"):
        start = time.perf_counter()
        result = store.search(TASK, row[None, :], DEFAULT_K)
        times.append((time.perf_counter() - start) * 1000)
        hits.append(result.neighbours[0])
    return times, hits


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def measure(
    size: int, queries: int, exact_queries: int, seed: int, policy: IndexPolicy, tmp: Path
) -> dict[str, Any]:
    mixture = Mixture.make(seed)
    rng = np.random.default_rng(seed + size)
    vectors, topic = mixture.draw(size, rng)
    exits = Exits.draw(mixture, topic, rng)
    probe, _ = mixture.draw(queries, rng)
    home = tmp / f"home-{size}"
    build_s = build(EdgeExitStore(home, policy=policy), vectors, exits)

    reader = EdgeExitStore(home, policy=policy)
    rss_before = rss_bytes()
    times, hits = timed_search(reader, probe, f"search {size}")
    rss_after = rss_bytes()
    exact_times, _ = timed_search(
        EdgeExitStore(home, exact=True, policy=policy), probe[:exact_queries], "exact"
    )
    info = reader.get_task(TASK)
    ids, sims = true_neighbours(vectors, probe, DEFAULT_K)

    recall = np.mean(
        [
            len({n.point_id for n in got} & set(want)) / DEFAULT_K
            for got, want in zip(hits, ids.tolist(), strict=True)
        ]
    )
    agree = [
        choose_exit(got, NUM_LAYERS).exit_layer
        == choose_exit(_exact(row_ids, row_sims, exits), NUM_LAYERS).exit_layer
        for got, row_ids, row_sims in zip(hits, ids.tolist(), sims.tolist(), strict=True)
    ]
    disk = reader.size_bytes(TASK) or 0
    reader.close()
    return {
        "points": info.points,
        "exact_search": policy.exact_for(info.points),
        "build_s": round(build_s, 1),
        "bytes_per_point": round(disk / info.points, 1),
        "serving_rss_bytes_per_point": round(max(0, rss_after - rss_before) / info.points, 1),
        "p50_ms": round(float(np.percentile(times, 50)), 3),
        "p99_ms": round(float(np.percentile(times, 99)), 3),
        "exact_p50_ms": round(float(np.percentile(exact_times, 50)), 3),
        "recall_at_12": round(float(recall), 4),
        "exit_agreement": round(float(np.mean(agree)), 4),
        "queries": len(probe),
        "exact_queries": len(exact_times),
    }


def _exact(ids: list[int], sims: list[float], exits: Exits) -> list[Neighbour]:
    return [Neighbour(i, s, "", "", "", 0, exits.info(i)) for i, s in zip(ids, sims, strict=True)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="points per task")
    parser.add_argument("--queries", type=int, default=500, help="timed queries at batch 1")
    parser.add_argument("--exact-queries", type=int, default=50, help="queries timed with exact search")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/scale.json"))
    parser.add_argument("--tmp", type=Path, help="where the stores are built (default: a temporary folder)")
    defaults = DEFAULT_POLICY
    parser.add_argument(
        "--threshold", type=int, default=defaults.threshold, help="index from this many points"
    )
    parser.add_argument("--m", type=int, default=defaults.hnsw_m)
    parser.add_argument("--ef-construct", type=int, default=defaults.hnsw_ef_construct)
    parser.add_argument("--ef", type=int, default=defaults.hnsw_ef)
    parser.add_argument("--quantization", choices=["int8", "none"], default=defaults.quantization)
    parser.add_argument("--oversampling", type=float, default=defaults.oversampling)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    policy = replace(
        DEFAULT_POLICY,
        threshold=args.threshold,
        hnsw_m=args.m,
        hnsw_ef_construct=args.ef_construct,
        hnsw_ef=args.ef,
        quantization=args.quantization,
        oversampling=args.oversampling,
    )
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/scale.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "index": policy.to_dict(),
        "sizes": {},
    }
    tmp = Path(tempfile.mkdtemp(prefix="raee-scale-", dir=args.tmp))
    try:
        for size in args.sizes:
            report["sizes"][str(size)] = measure(
                size, args.queries, args.exact_queries, args.seed, policy, tmp
            )
            shutil.rmtree(tmp / f"home-{size}", ignore_errors=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # each size as soon as it is measured
            print(json.dumps({size: report["sizes"][str(size)]}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
