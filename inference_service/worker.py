"""The inference worker: one retrieval call per micro-batch, truncated forward passes per task.

For a batch of requests the worker

1. resolves each task's spec (cached for ``task_ttl_s``, refreshed when the
   retrieval service reports a newer version) and refuses tasks ingested with
   another backbone;
2. asks the retrieval service for the exit layers of all RAEE requests in one
   ``BatchGetExitDistribution`` call; if that call fails or is too slow, those
   requests are marked ``degraded`` and run at their task's best single exit
   (measured at ingest: cheaper than full depth, and on most tasks at least as
   accurate), or at full depth for a task without that record. After such a
   failure the worker does not ask retrieval again for ``retry_after_s``, so a
   slow retrieval service costs one timeout per batch in flight, not one per batch;
3. groups requests by task and runs each group's forward work together, only up
   to the group's deepest exit: one pass from which each request's row leaves at
   its own exit, where the rows span two or more exits above the embeddings, and
   otherwise one pass per exit (:meth:`TaskProbe.predict_rows`).

The batcher may run two batches at once (``RAEE_BATCHES_IN_FLIGHT``): one in step
2 while the other runs its forward pass; forward passes run one at a time.

With ``overlap_retrieval`` (``RAEE_OVERLAP_RETRIEVAL``) the RAEE requests of a
batch that asks about one task, when no other batch is being processed, start
their forward pass while step 2 is in flight: each layer's prediction-position
state is kept, and the pass stops once the exits are known and reached (a state
already computed is read back). The answers equal the plain path's; whether it is
faster depends on spare cores, since the retrieval service's encoder competes
with the backbone (``docs/architecture.md``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from raee.backbone import Backbone, TaskProbe
from raee.errors import (
    BackboneMismatchError,
    InvalidArgumentError,
    RemoteError,
    TaskNotFoundError,
    UpstreamUnavailableError,
)
from raee.serving import tracing
from raee.serving.errors import code_name
from raee.serving.metrics import BATCH_GROUPS, BATCH_SIZE, DEGRADED, EXIT_LAYER, GROUP_SIZE
from raee.tasks import TaskSpec
from raee.wire.inference import Mode, Outcome, WorkItem
from raee.wire.retrieval import ExitPlan, PlanRequest, RetrievalClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Task:
    spec: TaskSpec
    version: str
    backbone_id: str
    fetched_at: float
    best_exit: int | None = None


@dataclass
class _Plan:
    """What the batch decided for one item before the forward pass."""

    task: _Task
    exit_layer: int
    outcome_fields: dict[str, object] = field(default_factory=dict)


class _Target:
    """The exit an overlapped pass runs to: unknown (None) until retrieval answers."""

    def __init__(self) -> None:
        self.exit: int | None = None  # written by the event loop's thread, read by the forward's

    def stop(self, exit_layer: int) -> bool:
        target = self.exit
        return target is not None and exit_layer >= target


@dataclass
class _Overlap:
    """A forward pass started before the exits are known."""

    indices: list[int]
    task: _Task
    probe: TaskProbe
    target: _Target
    future: asyncio.Future[_OverlapRun]


@dataclass
class _OverlapRun:
    states: list[object]  # torch tensors, one per exit reached
    too_long: dict[int, InvalidArgumentError]  # by position in the overlap's indices
    forward_ms: float


class InferenceWorker:
    def __init__(
        self,
        backbone: Backbone,
        retrieval: RetrievalClient,
        *,
        task_ttl_s: float = 5.0,
        retry_after_s: float = 1.0,
        overlap_retrieval: bool = False,
    ) -> None:
        self.backbone = backbone
        self.retrieval = retrieval
        self.task_ttl_s = task_ttl_s
        self.retry_after_s = retry_after_s
        self.overlap_retrieval = overlap_retrieval
        self._retrieval_down_until = 0.0
        self._tasks: dict[str, _Task] = {}
        self._probes: dict[tuple[str, str], TaskProbe] = {}
        self._batches = 0  # batches being processed (the batcher may run two at once)
        # Torch already uses every core: one forward pass at a time.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def waits_for_retrieval(self, item: WorkItem) -> bool:
        """Whether the item's processing starts with a retrieval call, which the batcher can
        overlap with another batch's forward pass."""
        return item.mode is Mode.RAEE and time.monotonic() >= self._retrieval_down_until

    async def process(self, items: Sequence[WorkItem]) -> list[Outcome | BaseException]:
        self._batches += 1
        try:
            return await self._process(items)
        finally:
            self._batches -= 1

    async def _process(self, items: Sequence[WorkItem]) -> list[Outcome | BaseException]:
        BATCH_SIZE.observe(len(items))
        results: list[Outcome | BaseException | None] = [None] * len(items)
        tasks = await self._resolve_tasks({item.task for item in items})
        plans: dict[int, _Plan] = {}
        raee_items: list[int] = []
        for index, item in enumerate(items):
            resolved = tasks[item.task]
            if isinstance(resolved, BaseException):
                results[index] = resolved
            elif item.mode is Mode.RAEE:
                raee_items.append(index)
            else:
                try:
                    plans[index] = _Plan(resolved, self._static_exit(item))
                except InvalidArgumentError as error:
                    results[index] = error
        if raee_items:
            overlap = None
            # A speculative pass beside another batch would hold up that batch's forward pass.
            if self.overlap_retrieval and self._batches == 1:
                overlap = await self._start_overlap(items, raee_items, tasks)
            try:
                await self._plan_raee(items, raee_items, tasks, plans, results)
            except BaseException:
                if overlap is not None:
                    overlap.target.exit = 0  # end the pass at once
                raise
            if overlap is not None:
                await self._finish_overlap(overlap, items, plans, results)
        await self._forward(items, plans, results)
        return [r if r is not None else RuntimeError("request was not processed") for r in results]

    # -- step 1: task specs -------------------------------------------------------------

    async def _resolve_tasks(self, names: set[str]) -> dict[str, _Task | BaseException]:
        resolved: dict[str, _Task | BaseException] = {}
        for name in names:
            try:
                task = await self._task(name)
                if task.backbone_id != str(self.backbone.id):
                    raise BackboneMismatchError(
                        f"task {name!r} was ingested with backbone {task.backbone_id}; "
                        f"this worker serves {self.backbone.id}"
                    )
                resolved[name] = task
            except Exception as error:
                resolved[name] = error
        return resolved

    async def _task(self, name: str) -> _Task:
        cached = self._tasks.get(name)
        if cached is not None and time.monotonic() - cached.fetched_at < self.task_ttl_s:
            return cached
        if cached is not None and time.monotonic() < self._retrieval_down_until:
            return cached  # retrieval failed a moment ago: do not wait for it again
        try:
            remote = await self.retrieval.get_task(name)
        except TaskNotFoundError:
            self._tasks.pop(name, None)
            raise
        except UpstreamUnavailableError:
            if cached is None:
                raise
            # Retrieval is down: serve what we know, ask again after the TTL.
            self._tasks[name] = dataclasses.replace(cached, fetched_at=time.monotonic())
            return cached
        task = _Task(remote.spec, remote.version, remote.backbone_id, time.monotonic(), remote.best_exit)
        self._tasks[name] = task
        return task

    def _static_exit(self, item: WorkItem) -> int:
        if item.mode is Mode.FULL:
            return self.backbone.num_layers
        assert item.layer is not None, "validated by raee.wire.inference.work_item"
        if not 0 <= item.layer <= self.backbone.num_layers:
            raise InvalidArgumentError("layer", f"{item.layer} is outside 0..{self.backbone.num_layers}")
        return item.layer

    # -- step 2: exit layers from the retrieval service ---------------------------------

    async def _plan_raee(
        self,
        items: Sequence[WorkItem],
        indices: list[int],
        tasks: dict[str, _Task | BaseException],
        plans: dict[int, _Plan],
        results: list[Outcome | BaseException | None],
    ) -> None:
        requests = [
            PlanRequest(item.task, item.text, item.k, item.include_distribution)
            for item in (items[i] for i in indices)
        ]
        started = time.perf_counter()
        if time.monotonic() < self._retrieval_down_until:
            DEGRADED.labels("retrying_later").inc()
            self._degrade(items, indices, tasks, plans, "retrieval failed recently; retrying shortly")
            return
        try:
            with tracing.span("retrieval", items=len(requests)):
                answers = await self.retrieval.exit_plans(requests)
        except (UpstreamUnavailableError, RemoteError) as error:
            if isinstance(error, UpstreamUnavailableError):
                reason = error.reason
                self._retrieval_down_until = time.monotonic() + self.retry_after_s
            else:
                reason = code_name(error.code)
            DEGRADED.labels(reason).inc()
            logger.warning("answering %d requests without retrieval: %s", len(indices), error)
            self._degrade(items, indices, tasks, plans, str(error)[:200])
            return
        retrieval_ms = 1000 * (time.perf_counter() - started)
        for i, answer in zip(indices, answers, strict=True):
            task = tasks[items[i].task]
            assert isinstance(task, _Task)
            if isinstance(answer, RemoteError):
                results[i] = answer
            elif self._check_plan(items[i].task, answer, results, i):
                plans[i] = _Plan(task, answer.exit_layer, _plan_fields(answer, retrieval_ms))

    def _degrade(
        self,
        items: Sequence[WorkItem],
        indices: list[int],
        tasks: dict[str, _Task | BaseException],
        plans: dict[int, _Plan],
        why: str,
    ) -> None:
        """Plan each item at its task's best single exit, or at full depth without that record."""
        for i in indices:
            task = tasks[items[i].task]
            assert isinstance(task, _Task)
            exit_layer = self.backbone.num_layers if task.best_exit is None else task.best_exit
            where = "full depth" if task.best_exit is None else f"the task's best single exit ({exit_layer})"
            fields: dict[str, object] = {"degraded": True, "degraded_reason": f"{why}; answered at {where}"}
            plans[i] = _Plan(task, exit_layer, fields)

    def _check_plan(
        self, name: str, plan: ExitPlan, results: list[Outcome | BaseException | None], index: int
    ) -> bool:
        """Whether this worker can follow the plan; refresh the task on a new version."""
        cached = self._tasks.get(name)
        if cached is not None and plan.task_version != cached.version:
            self._tasks.pop(name, None)  # a new version: refresh the spec next batch
        if plan.backbone_id != str(self.backbone.id):
            results[index] = BackboneMismatchError(
                f"task {name!r} is now ingested with backbone {plan.backbone_id}; "
                f"this worker serves {self.backbone.id}"
            )
            return False
        return True

    # -- step 3: truncated forward passes -----------------------------------------------

    async def _forward(
        self,
        items: Sequence[WorkItem],
        plans: dict[int, _Plan],
        results: list[Outcome | BaseException | None],
    ) -> None:
        groups: dict[str, list[int]] = defaultdict(list)
        for index in plans:
            groups[items[index].task].append(index)
        BATCH_GROUPS.observe(len(groups))
        loop = asyncio.get_running_loop()
        for task_name, indices in groups.items():
            GROUP_SIZE.observe(len(indices))
            task = plans[indices[0]].task
            probe = await self._probe(task_name, task)
            texts = [items[i].text for i in indices]
            exits = [plans[i].exit_layer for i in indices]
            try:
                with tracing.span("forward", task=task_name, exit_layer=max(exits), size=len(indices)):
                    probabilities, forward_ms, too_long = await loop.run_in_executor(
                        self._executor, _predict, probe, texts, exits
                    )
            except Exception as error:
                for i in indices:
                    results[i] = error
                continue
            for position, i in enumerate(indices):
                if position in too_long:
                    results[i] = too_long[position]
                    continue
                mode = items[i].mode.name.lower()
                EXIT_LAYER.labels("inference", mode).observe(exits[position])
                results[i] = _outcome(
                    task,
                    probabilities[position],
                    exits[position],
                    self.backbone.num_layers,
                    plans[i],
                    forward_ms,
                    len(indices),
                )

    # -- overlap: the forward pass during the retrieval call ----------------------------

    async def _start_overlap(
        self, items: Sequence[WorkItem], indices: list[int], tasks: dict[str, _Task | BaseException]
    ) -> _Overlap | None:
        """Start the RAEE items' forward pass now; only for a batch that asks about one task."""
        names = {items[i].task for i in indices}
        task = tasks[next(iter(names))]
        if len(names) != 1 or not isinstance(task, _Task):
            return None
        probe = await self._probe(items[indices[0]].task, task)
        texts = [items[i].text for i in indices]
        target = _Target()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, _run_overlapped, probe, texts, target.stop
        )
        return _Overlap(indices, task, probe, target, future)

    async def _finish_overlap(
        self,
        overlap: _Overlap,
        items: Sequence[WorkItem],
        plans: dict[int, _Plan],
        results: list[Outcome | BaseException | None],
    ) -> None:
        """Answer the planned items from the stored states; on any failure the plain path does."""
        planned = [(position, i) for position, i in enumerate(overlap.indices) if i in plans]
        overlap.target.exit = max((plans[i].exit_layer for _, i in planned), default=0)
        try:
            run = await overlap.future
        except Exception:
            logger.exception("the overlapped forward pass failed; running the plain one")
            return
        exits = [plans[i].exit_layer for _, i in planned]
        rows = [position for position, _ in planned]
        loop = asyncio.get_running_loop()
        probabilities = await loop.run_in_executor(
            self._executor, _read_exits, overlap.probe, run, rows, exits
        )
        for (position, i), exit_layer, row in zip(planned, exits, probabilities, strict=True):
            plan = plans.pop(i)
            if position in run.too_long:
                results[i] = run.too_long[position]
                continue
            EXIT_LAYER.labels("inference", "raee").observe(exit_layer)
            results[i] = _outcome(
                overlap.task, row, exit_layer, self.backbone.num_layers, plan, run.forward_ms, len(exits)
            )

    async def _probe(self, name: str, task: _Task) -> TaskProbe:
        key = (name, task.version)
        probe = self._probes.get(key)
        if probe is None:
            # On the forward thread: building a probe tokenises, and a tokenizer must not be
            # used by two threads at once.
            loop = asyncio.get_running_loop()
            probe = await loop.run_in_executor(self._executor, self.backbone.for_task, task.spec)
            for stale in [k for k in self._probes if k[0] == name]:
                del self._probes[stale]
            self._probes[key] = probe
        return probe


def _plan_fields(plan: ExitPlan, retrieval_ms: float) -> dict[str, object]:
    fields: dict[str, object] = {
        "retrieval_ms": retrieval_ms,
        "fallback": plan.fallback,
        "task_version": plan.task_version,
    }
    if plan.distribution:
        fields["distribution"] = list(plan.distribution)
    return fields


def _tokenize_checked(
    probe: TaskProbe, texts: list[str]
) -> tuple[list[list[int]], dict[int, InvalidArgumentError]]:
    """Each prompt's ids, and an error for each one over the token limit (by index)."""
    limit = probe.backbone.max_tokens
    ids = probe.tokenize(texts)
    too_long = {
        i: InvalidArgumentError("text", f"the prompt is {len(row)} tokens, more than the limit of {limit}")
        for i, row in enumerate(ids)
        if len(row) > limit
    }
    return ids, too_long


def _predict(
    probe: TaskProbe, texts: list[str], exits: list[int]
) -> tuple[np.ndarray, float, dict[int, InvalidArgumentError]]:
    """Run one group, text ``i`` to ``exits[i]``; texts over the token limit fail alone.

    Each prompt is tokenised once: the same ids give the limit check and the forward pass.
    """
    ids, too_long = _tokenize_checked(probe, texts)
    keep = [i for i in range(len(texts)) if i not in too_long]
    started = time.perf_counter()
    probabilities = np.zeros((len(texts), probe.spec.num_labels), dtype=np.float32)
    if keep:
        probabilities[keep] = probe.predict_rows([ids[i] for i in keep], [exits[i] for i in keep])
    return probabilities, 1000 * (time.perf_counter() - started), too_long


def _run_overlapped(probe: TaskProbe, texts: list[str], stop: Callable[[int], bool]) -> _OverlapRun:
    """Every exit's state until ``stop`` says enough; over-long texts are left out (and reported)."""
    ids, too_long = _tokenize_checked(probe, texts)
    started = time.perf_counter()
    keep = [row for i, row in enumerate(ids) if i not in too_long]
    states: list[object] = list(probe.states_until(keep, stop)) if keep else []
    return _OverlapRun(states, too_long, 1000 * (time.perf_counter() - started))


def _read_exits(
    probe: TaskProbe, run: _OverlapRun, positions: list[int], exits: list[int]
) -> list[np.ndarray]:
    """Each position's probabilities at its exit (the pass ran at least to the deepest one)."""
    answers: list[np.ndarray] = []
    for position, exit_layer in zip(positions, exits, strict=True):
        if position in run.too_long:
            answers.append(np.zeros(probe.spec.num_labels, dtype=np.float32))
            continue
        row = position - sum(1 for p in run.too_long if p < position)  # over-long texts did not run
        state = run.states[exit_layer]
        answers.append(probe.probabilities_of(state[row : row + 1])[0])  # type: ignore[index]
    return answers


def _outcome(
    task: _Task,
    probabilities: np.ndarray,
    exit_layer: int,
    num_layers: int,
    plan: _Plan,
    forward_ms: float,
    group: int,
) -> Outcome:
    label_index = int(np.argmax(probabilities))
    outcome = Outcome(
        label=task.spec.label_names[label_index],
        label_index=label_index,
        probabilities=[float(p) for p in probabilities],
        exit_layer=exit_layer,
        num_layers=num_layers,
        forward_ms=forward_ms,
        task_version=task.version,
        batch_group_size=group,
    )
    for name, value in plan.outcome_fields.items():
        setattr(outcome, name, value)
    return outcome
