"""``raee eval``: ingest each task's train split, classify its test split through the services, score.

For every task the runner

1. ingests the train split, reusing the published version when the spec, the
   backbone and the data (file hash and row limit) are unchanged;
2. classifies the test split through the running gRPC services, in RAEE and FULL
   mode (ClassifyBatch), and asks the retrieval service for the neighbours used;
3. reads the exit probabilities of the test split, and of a train sample for the
   confidence baseline's tau, from the backbone directly;
4. measures batch-1 latency p50 through gRPC on a sample: RAEE, FULL, the static
   exit (FIXED mode), and the retrieval call alone (the kNN vote's cost); and,
   from the services' own timings of the same calls, the retrieval overhead:
   encode + search + aggregate over the full forward pass; and, running the
   backbone in this process to RAEE's exits, what RAEE costs beyond those layers.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from evaluation.methods import ABLATIONS, DEGENERATE, METHODS, TaskArrays, constant_exits, evaluate
from evaluation.report import write
from ingest import run_ingest
from raee.backbone import Backbone, TaskProbe
from raee.data import Example, read_examples
from raee.encoder import QueryEncoder
from raee.errors import TaskNotFoundError
from raee.settings import InferenceSettings, RetrievalSettings
from raee.store import ExitStore, Neighbour, TaskVersion, open_store
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2, inference_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from raee.wire.inference import classify_request
from raee.wire.retrieval import neighbour_from_message
from raee_cli.pair import RunningPair, start_pair, start_process_pair

SPECS_DIR = Path(str(files("evaluation") / "tasks"))  # package data: found installed too
CHUNK = 64
log = logging.getLogger("raee.eval")
THROUGHPUT_CLIENTS = 16
SPEED_SEED = 29
# Long enough that a busy machine does not turn RAEE answers into degraded answers at a fallback exit.
EVAL_RETRIEVAL_TIMEOUT_MS = 60_000.0
INGEST_BENCHMARK = "ingest_and_query.json"  # benchmarks/ingest_and_query.py's report, in --out


@dataclass(frozen=True)
class EvalTask:
    family: str
    task: str
    spec: TaskSpec
    train: Path
    test: Path


def benchmark_tasks(data_root: Path, families: Sequence[str], tasks: Sequence[str]) -> list[EvalTask]:
    """The shipped specs (``evaluation/tasks/<family>/<task>.yaml``) over ``data_root/<task>``."""
    found = []
    for family in families:
        for task in tasks:
            spec_file = SPECS_DIR / family / f"{task}.yaml"
            if not spec_file.is_file():
                raise ValueError(f"family {family!r} has no spec for task {task!r} ({spec_file})")
            found.append(EvalTask(family, task, TaskSpec.from_file(spec_file), *_splits(data_root / task)))
    return found


def folder_task(folder: Path, family: str = "custom") -> EvalTask:
    """A task folder in the same layout: ``task.yaml``, ``train.jsonl``, ``test.jsonl``."""
    spec = TaskSpec.from_file(folder / "task.yaml")
    return EvalTask(family, spec.name, spec, *_splits(folder))


def _splits(folder: Path) -> tuple[Path, Path]:
    train, test = folder / "train.jsonl", folder / "test.jsonl"
    for path in (train, test):
        if not path.is_file():
            raise ValueError(f"task data: {path} does not exist")
    return train, test


def data_fingerprint(path: Path, limit: int | None) -> str:
    return f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}:{limit}"


def ensure_ingested(
    task: EvalTask,
    *,
    backbone: Backbone,
    encoder: QueryEncoder,
    store: ExitStore,
    train_limit: int | None,
) -> tuple[TaskVersion, bool]:
    """The task's published version; ingests only when spec, backbone or data changed."""
    fingerprint = data_fingerprint(task.train, train_limit)
    try:
        current = store.get_task(task.spec.name)
        unchanged = (
            current.spec == task.spec
            and current.backbone_id == str(backbone.id)
            and current.encoder_id == encoder.id
            and current.stats.get("data_fingerprint") == fingerprint
        )
        if unchanged:
            return current, True
    except TaskNotFoundError:
        pass
    examples = read_task_examples(task.train, task.spec, train_limit)
    result = run_ingest(
        task.spec,
        examples,
        backbone=backbone,
        encoder=encoder,
        store=store,
        extra_stats={"data_file": str(task.train), "data_fingerprint": fingerprint},
    )
    assert result.version is not None
    return result.version, False


def read_task_examples(path: Path, spec: TaskSpec, limit: int | None) -> list[Example]:
    """A task file's examples (any invalid row is an error); a seeded sample of ``limit`` of them."""
    examples, errors = read_examples(path, spec)
    if errors:
        raise ValueError(f"{len(errors)} invalid rows in {path}; first: {errors[0]}")
    if limit is not None and limit < len(examples):
        # A seeded sample, not the first rows: data files are often sorted by label.
        keep = np.sort(np.random.default_rng(13).choice(len(examples), limit, replace=False))
        examples = [examples[i] for i in keep]
    return examples


def exit_probabilities(probe: TaskProbe, texts: Sequence[str], batch: int = 16) -> np.ndarray:
    return np.concatenate(
        [probe.exit_probabilities(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    )


class DegradedAnswersError(RuntimeError):
    """RAEE answers came back degraded (a fallback exit after a retrieval failure): they are not RAEE's."""


@dataclass
class Classified:
    """One mode's answers to a task's test set through ClassifyBatch."""

    labels: list[int]
    exits: list[int]
    seconds: float = 0.0
    degraded: int = 0


async def classify_both(
    stub: inference_pb2_grpc.InferenceServiceStub, task: str, texts: Sequence[str]
) -> dict[str, Classified]:
    """RAEE and FULL answers to ``texts`` through ClassifyBatch, the modes alternating chunk by chunk.

    Alternating (and swapping which mode goes first) spreads the machine's noise over
    both modes alike, so the ratio of their rates is fair.
    """
    answers = {"raee": Classified([], []), "full": Classified([], [])}
    for number, start in enumerate(range(0, len(texts), CHUNK)):
        chunk = texts[start : start + CHUNK]
        for mode in ("raee", "full") if number % 2 == 0 else ("full", "raee"):
            request = inference_pb2.ClassifyBatchRequest(
                requests=[classify_request(task, text, mode) for text in chunk]
            )
            started = time.perf_counter()
            reply = await stub.ClassifyBatch(request, timeout=600)
            answers[mode].seconds += time.perf_counter() - started
            for result in reply.results:
                if result.HasField("error"):
                    raise RuntimeError(f"{task}: {mode} failed: {result.error.message}")
                answers[mode].labels.append(result.response.label_index)
                answers[mode].exits.append(result.response.exit_layer)
                answers[mode].degraded += result.response.degraded
    check_not_degraded(task, "raee", answers["raee"].degraded)
    return answers


def check_not_degraded(task: str, what: str, degraded: int) -> None:
    if degraded:
        raise DegradedAnswersError(
            f"{task}: {degraded} {what} answers were degraded (answered at a fallback exit after the "
            "retrieval service failed or timed out); they would be scored and timed as RAEE. "
            "Rerun on a quieter machine, or raise the eval's retrieval timeout."
        )


def speed_sample(count: int, size: int, seed: int = SPEED_SEED) -> list[int]:
    """A seeded, shuffled sample of test indices: test files are often sorted by label."""
    return [int(i) for i in np.random.default_rng(seed).permutation(count)[:size]]


async def retrieve_neighbours(
    stub: retrieval_pb2_grpc.RetrievalServiceStub, spec: TaskSpec, texts: Sequence[str]
) -> list[list[Neighbour]]:
    """Each text's k neighbours (the service's default k), nearest first."""
    rows: list[list[Neighbour]] = []
    for i in range(0, len(texts), CHUNK):
        request = retrieval_pb2.BatchExitDistributionRequest(
            requests=[
                retrieval_pb2.ExitDistributionRequest(task=spec.name, text=t, include_neighbours=True)
                for t in texts[i : i + CHUNK]
            ]
        )
        reply = await stub.BatchGetExitDistribution(request, timeout=600)
        for result in reply.results:
            if result.HasField("error"):
                raise RuntimeError(f"{spec.name}: retrieval failed: {result.error.message}")
            rows.append([neighbour_from_message(n, spec) for n in result.response.neighbours])
    return rows


RETRIEVAL_PARTS = ("encode", "search", "aggregate")
IN_PROCESS = ("in_process_raee_exit", "in_process_full")


@dataclass(frozen=True)
class Batch1Timing:
    """Batch-1 p50s through gRPC per method, and the services' own p50s of the parts.

    ``parts_ms`` holds the retrieval service's RetrievalTiming (encode, search,
    aggregate) of the kNN calls and the worker's ``forward_ms`` of the FULL calls:
    the retrieval overhead without gRPC.
    """

    p50_ms: dict[str, float]
    parts_ms: dict[str, float]

    @property
    def retrieval_ms(self) -> float:
        return sum(self.parts_ms[part] for part in RETRIEVAL_PARTS)

    @property
    def retrieval_overhead(self) -> float:
        """Retrieval time over a full forward pass, both measured inside the services."""
        return self.retrieval_ms / self.parts_ms["full_forward"]

    @property
    def overhead_vs_fixed(self) -> float:
        """RAEE's p50 beyond an in-process forward to the same exits, over an in-process full forward."""
        beyond = self.p50_ms["raee"] - self.p50_ms["in_process_raee_exit"]
        return beyond / self.p50_ms["in_process_full"]

    @property
    def overhead_by_part(self) -> dict[str, float]:
        return {part: self.parts_ms[part] / self.parts_ms["full_forward"] for part in RETRIEVAL_PARTS}


def call_order(ways: Sequence[str], rng: np.random.Generator) -> list[str]:
    """One text's order of the timed ways: shuffled, with RAEE before its in-process twin.

    A call's latency depends on what ran just before it: on two cores a RAEE call
    right after a full forward pass took 2-4 ms longer than after a shallow call. In
    a fixed order every way always follows the same one (it put RAEE's call after the
    in-process full forward, its twin after a shallower fixed exit, and the
    in-process full forward after the twin); a shuffle per text varies every way's
    predecessor. The in-process run to RAEE's exit needs the exit the RAEE call
    chose, so the two swap places when the shuffle puts the twin first.
    """
    order = [str(way) for way in rng.permutation(list(ways))]
    raee, twin = order.index("raee"), order.index(IN_PROCESS[0])
    if twin < raee:
        order[raee], order[twin] = order[twin], order[raee]
    return order


async def batch1_timing(
    inference: inference_pb2_grpc.InferenceServiceStub,
    retrieval: retrieval_pb2_grpc.RetrievalServiceStub,
    probe: TaskProbe,
    texts: Sequence[str],
    fixed_exits: dict[str, int],
) -> Batch1Timing:
    """Batch-1 latency per way of answering, the ways alternating request by request.

    The ways run in a fresh seeded order for each text (:func:`call_order`).

    ``fixed_exits`` names methods served as a fixed exit (FIXED mode at that layer).
    Beside the gRPC calls, the same backbone runs in this process, without retrieval
    or services, to RAEE's exit for the text (``in_process_raee_exit``) and to the
    last exit (``in_process_full``): what RAEE costs beyond the layers it runs.
    """
    task = probe.spec.name

    def fixed(layer: int) -> Any:
        return lambda t: inference.Classify(classify_request(task, t, "fixed", layer), timeout=60)

    calls: dict[str, Any] = {
        "raee": lambda t: inference.Classify(classify_request(task, t, "raee"), timeout=60),
        "full": lambda t: inference.Classify(classify_request(task, t, "full"), timeout=60),
        "knn": lambda t: retrieval.GetExitDistribution(
            retrieval_pb2.ExitDistributionRequest(task=task, text=t), timeout=60
        ),
        **{name: fixed(layer) for name, layer in fixed_exits.items()},
    }
    latencies: dict[str, list[float]] = {name: [] for name in (*calls, *IN_PROCESS)}
    parts: dict[str, list[float]] = {name: [] for name in (*RETRIEVAL_PARTS, "full_forward")}
    rng = np.random.default_rng(SPEED_SEED)
    for text in texts:
        raee_exit: int | None = None  # set by the RAEE call, which call_order puts first
        for name in call_order([*calls, *IN_PROCESS], rng):
            started = time.perf_counter()
            if name in IN_PROCESS:
                layer = raee_exit if name == IN_PROCESS[0] else probe.num_layers
                if layer is None:
                    raise RuntimeError("call_order put the in-process twin before the RAEE call")
                probe.predict_at([text], layer)
                latencies[name].append(1000 * (time.perf_counter() - started))
                continue
            reply = await calls[name](text)
            latencies[name].append(1000 * (time.perf_counter() - started))
            if name == "raee":
                check_not_degraded(task, "batch-1 raee", int(reply.degraded))
                raee_exit = int(reply.exit_layer)
            if name == "knn":
                for part in RETRIEVAL_PARTS:
                    parts[part].append(getattr(reply.timing, f"{part}_ms"))
            elif name == "full":
                parts["full_forward"].append(reply.forward_ms)
    return Batch1Timing(
        p50_ms={name: float(np.percentile(values, 50)) for name, values in latencies.items()},
        parts_ms={name: float(np.percentile(values, 50)) for name, values in parts.items()},
    )


async def clients_rate(
    inference: inference_pb2_grpc.InferenceServiceStub,
    task: str,
    texts: Sequence[str],
    mode: str,
    *,
    clients: int = THROUGHPUT_CLIENTS,
    per_client: int = 4,
) -> float:
    """Requests/s of one round: ``clients`` callers, each sending ``per_client`` single-text calls in turn.

    Each caller waits for its answer before its next call, so the worker's
    micro-batcher sees the concurrency a real fleet of clients creates.
    """

    async def caller(offset: int) -> None:
        for i in range(per_client):
            text = texts[(offset * per_client + i) % len(texts)]
            reply = await inference.Classify(classify_request(task, text, mode), timeout=120)
            check_not_degraded(task, f"{clients}-client {mode}", int(reply.degraded))

    started = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(clients)))
    return clients * per_client / (time.perf_counter() - started)


async def throughput_ratio(
    inference: inference_pb2_grpc.InferenceServiceStub,
    task: str,
    texts: Sequence[str],
    *,
    clients: int = THROUGHPUT_CLIENTS,
    per_client: int = 4,
    rounds: int = 4,
) -> float:
    """RAEE over FULL requests/s of ``clients`` callers (:func:`clients_rate`), rounds alternating by mode.

    The ratio is of the two modes' medians over ``rounds`` rounds: one round of 64
    requests moves by up to a tenth on this machine, and a median of two is their mean.
    """
    rates: dict[str, list[float]] = {"raee": [], "full": []}
    for _ in range(rounds):
        for mode in rates:
            rates[mode].append(
                await clients_rate(inference, task, texts, mode, clients=clients, per_client=per_client)
            )
    return float(np.median(rates["raee"]) / np.median(rates["full"]))


async def evaluate_task(
    task: EvalTask,
    *,
    backbone: Backbone,
    channels: tuple[grpc.aio.Channel, grpc.aio.Channel],
    version: TaskVersion,
    tau_sample: int,
    latency_sample: int,
) -> dict[str, Any]:
    inference = inference_pb2_grpc.InferenceServiceStub(channels[0])
    retrieval = retrieval_pb2_grpc.RetrievalServiceStub(channels[1])
    spec = task.spec
    tests = read_task_examples(task.test, spec, None)
    texts = [e.text for e in tests]
    probe = backbone.for_task(spec)
    answers = await classify_both(inference, spec.name, texts)
    raee_preds, raee_exits = np.array(answers["raee"].labels), np.array(answers["raee"].exits)
    full_preds = np.array(answers["full"].labels)
    timed = speed_sample(len(texts), max(latency_sample, THROUGHPUT_CLIENTS * 4))
    timed_texts = [texts[i] for i in timed]
    train_sample = read_task_examples(task.train, spec, tau_sample)
    neighbours = await retrieve_neighbours(retrieval, spec, texts)
    arrays = TaskArrays(
        gold=np.array([e.label_index for e in tests]),
        test_probs=exit_probabilities(probe, texts),
        raee_preds=raee_preds,
        raee_exits=raee_exits,
        full_preds=full_preds,
        neighbour_labels=np.array([[n.label_index for n in row] for row in neighbours]),
        neighbours=neighbours,
        train_probs=exit_probabilities(probe, [e.text for e in train_sample]),
        train_gold=np.array([e.label_index for e in train_sample]),
    )
    scores = evaluate(arrays, spec.metric)
    # The exit-based baselines are timed as the fixed exit they (on average) run to.
    exit_based = ("static", "confidence", "oracle", *DEGENERATE)
    fixed_exits = {m: round(scores[m].avg_exit) for m in exit_based}
    timing = await batch1_timing(inference, retrieval, probe, timed_texts[:latency_sample], fixed_exits)
    concurrent = await throughput_ratio(inference, spec.name, timed_texts)
    return {
        "methods": {
            method: {
                "score": round(score.score, 2),
                "avg_exit": round(score.avg_exit, 3),
                "p50_ms": round(timing.p50_ms[method], 2),
            }
            for method, score in scores.items()
            if method in (*METHODS, *DEGENERATE)
        },
        "ablations": {
            method: {"score": round(scores[method].score, 2), "avg_exit": round(scores[method].avg_exit, 3)}
            for method in ABLATIONS
        },
        "constant_exits": np.flatnonzero(constant_exits(arrays.train_probs)).tolist(),
        "raee_exit_histogram": np.bincount(raee_exits, minlength=backbone.num_layers + 1).tolist(),
        "throughput_rps": {mode: len(texts) / answer.seconds for mode, answer in answers.items()},
        "degraded": {mode: answer.degraded for mode, answer in answers.items()},
        "speed_sample": {"seed": SPEED_SEED, "test_indices": timed},
        "latency_ratio_p50": timing.p50_ms["raee"] / timing.p50_ms["full"],
        f"throughput_ratio_{THROUGHPUT_CLIENTS}": concurrent,
        "retrieval_overhead": timing.retrieval_overhead,
        "overhead_vs_fixed": timing.overhead_vs_fixed,
        "in_process_p50_ms": {name: round(timing.p50_ms[name], 3) for name in IN_PROCESS},
        "retrieval_overhead_grpc": timing.p50_ms["knn"] / timing.p50_ms["full"],
        "retrieval_overhead_by_part": timing.overhead_by_part,
        "batch1_parts_p50_ms": {part: round(ms, 3) for part, ms in timing.parts_ms.items()},
        "test_examples": len(texts),
        "train_points": version.points,
    }


def eval_worker_settings() -> InferenceSettings:
    """The eval's worker: an offline run with a private pair, so a long grace period (the
    worker's drain-bound admission never sheds a chunk on a slow machine) and the eval's
    retrieval deadline."""
    return InferenceSettings(
        port=0, metrics_port=0, http_port=-1, grace_s=600.0, retrieval_timeout_ms=EVAL_RETRIEVAL_TIMEOUT_MS
    )


async def run_eval(
    tasks: Sequence[EvalTask],
    *,
    home: Path,
    out: Path,
    command: str,
    backbone_source: str,
    encoder_source: str,
    train_limit: int | None,
    tau_sample: int,
    latency_sample: int,
    retrieval_process: bool = False,
) -> dict[str, Any]:
    """Evaluate every task through one pair of services on the embedded store; write the reports.

    Both services run in this process, or with ``retrieval_process`` the retrieval
    service runs as its own process, as it is deployed.
    """
    backbone = Backbone.load(backbone_source)
    encoder = QueryEncoder(encoder_source)
    store = open_store(home=home)
    retrieval_config = RetrievalSettings(port=0, metrics_port=0, home=home, encoder=encoder_source)
    inference_config = eval_worker_settings()
    pair: RunningPair
    if retrieval_process:
        pair = await start_process_pair(retrieval_config, inference_config, backbone=backbone)
    else:
        pair = await start_pair(retrieval_config, inference_config, backbone=backbone, encoder=encoder)
    families: dict[str, dict[str, Any]] = {}
    details: dict[str, dict[str, Any]] = {}
    try:
        async with (
            grpc.aio.insecure_channel(pair.inference_address) as inference,
            grpc.aio.insecure_channel(pair.retrieval_address) as retrieval,
        ):
            for task in tasks:
                started = time.perf_counter()
                version, reused = ensure_ingested(
                    task, backbone=backbone, encoder=encoder, store=store, train_limit=train_limit
                )
                result = await evaluate_task(
                    task,
                    backbone=backbone,
                    channels=(inference, retrieval),
                    version=version,
                    tau_sample=tau_sample,
                    latency_sample=latency_sample,
                )
                families.setdefault(task.family, {})[task.task] = result.pop("methods")
                details.setdefault(task.family, {})[task.task] = {**result, "reused_version": reused}
                log.info("%s/%s done in %.0f s", task.family, task.task, time.perf_counter() - started)
                _summarise(families, details, backbone, command, out)  # partial results survive a stop
    finally:
        await pair.stop()
        store.close()

    return _summarise(families, details, backbone, command, out)


def _summarise(
    families: dict[str, dict[str, Any]],
    details: dict[str, dict[str, Any]],
    backbone: Backbone,
    command: str,
    out: Path,
) -> dict[str, Any]:
    """Build and write the reports of the tasks done so far."""

    summary = {
        "backbone": str(backbone.id),
        "num_layers": backbone.num_layers,
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "families": families,
        "speed": speed_summary(details, out),
    }
    write(summary, details, out)
    return summary


def speed_summary(details: dict[str, dict[str, Any]], out: Path) -> dict[str, Any]:
    """The speed ratios, averaged over the tasks evaluated; ingest's from its benchmark's report.

    Ingest throughput against a bare forward pass needs passes interleaved batch by
    batch, which ``benchmarks/ingest_and_query.py`` does; its report, when present
    in ``out`` (``make results`` writes it first), is read as it is.
    """
    done = [d for tasks in details.values() for d in tasks.values()]

    def mean(key: str) -> float:
        return float(np.mean([d[key] for d in done]))

    speed: dict[str, Any] = {
        "latency_ratio_p50": mean("latency_ratio_p50"),
        f"throughput_ratio_{THROUGHPUT_CLIENTS}": mean(f"throughput_ratio_{THROUGHPUT_CLIENTS}"),
        "retrieval_overhead": mean("retrieval_overhead"),
        "overhead_vs_fixed": mean("overhead_vs_fixed"),
        "retrieval_overhead_by_part": {
            part: float(np.mean([d["retrieval_overhead_by_part"][part] for d in done]))
            for part in RETRIEVAL_PARTS
        },
        "retrieval_overhead_grpc": mean("retrieval_overhead_grpc"),
        "throughput_ratio_classify_batch": float(
            np.mean([d["throughput_rps"]["raee"] / d["throughput_rps"]["full"] for d in done])
        ),
    }
    ingest_report = out / INGEST_BENCHMARK
    if ingest_report.is_file():
        speed["ingest_vs_forward"] = json.loads(ingest_report.read_text())["ingest_vs_forward_with_head"]
    return speed
