"""Overlapping retrieval with the first layers (``RAEE_OVERLAP_RETRIEVAL``) changes no answer.

Real Gemma, a scripted retrieval client: the exits are known before the pass
reaches them (fast retrieval) or after it has passed them (slow retrieval), and
retrieval may fail (the degraded path). Each time the overlapped worker must
answer exactly as the plain one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from inference_service.worker import InferenceWorker
from raee.backbone import Backbone
from raee.errors import UpstreamUnavailableError
from raee.exit_rule import Fallback
from raee.tasks import TaskSpec
from raee.wire.inference import Mode, Outcome, WorkItem
from raee.wire.retrieval import ExitPlan, PlanRequest, RemoteTask
from tests.conftest import SENTIMENT_TEXTS

EXITS = [0, 3, 9, 18]
BEST_EXIT = 7


class ScriptedRetrieval:
    """Answers each text with its exit from ``exits`` after ``delay_s``; or fails."""

    def __init__(self, spec: TaskSpec, backbone_id: str, exits: dict[str, int], delay_s: float) -> None:
        self.spec, self.backbone_id, self.exits, self.delay_s = spec, backbone_id, exits, delay_s
        self.fail = False

    async def get_task(self, task: str) -> RemoteTask:
        return RemoteTask(self.spec, "v1", self.backbone_id, best_exit=BEST_EXIT)

    async def exit_plans(self, items: Sequence[PlanRequest]) -> list[ExitPlan]:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise UpstreamUnavailableError("scripted failure", reason="unavailable")
        return [ExitPlan(self.exits[i.text], Fallback.NONE, "v1", self.backbone_id) for i in items]


async def answers(worker: InferenceWorker, texts: list[str]) -> list[Outcome]:
    items = [WorkItem("sst2", text, Mode.RAEE) for text in texts]
    items.append(WorkItem("sst2", texts[0], Mode.FIXED, layer=5))  # a non-RAEE item rides along
    outcomes = await worker.process(items)
    assert all(isinstance(o, Outcome) for o in outcomes), outcomes
    return outcomes  # type: ignore[return-value]


@pytest.mark.parametrize("delay_s", [0.0, 0.5], ids=["retrieval-first", "backbone-first"])
@pytest.mark.parametrize("fail", [False, True], ids=["planned", "degraded"])
async def test_overlap_answers_as_the_plain_path(
    gemma: Backbone, cloze_spec: TaskSpec, delay_s: float, fail: bool
) -> None:
    texts = SENTIMENT_TEXTS[: len(EXITS)]
    exits = dict(zip(texts, EXITS, strict=True))
    got: dict[bool, list[Outcome]] = {}
    for overlap in (False, True):
        retrieval = ScriptedRetrieval(cloze_spec, str(gemma.id), exits, delay_s)
        retrieval.fail = fail
        worker = InferenceWorker(gemma, retrieval, overlap_retrieval=overlap)  # type: ignore[arg-type]
        try:
            got[overlap] = await answers(worker, texts)
            got[overlap] += await answers(worker, texts[:1])  # batch 1
        finally:
            worker.close()
    for plain, overlapped in zip(got[False], got[True], strict=True):
        assert overlapped.exit_layer == plain.exit_layer
        assert overlapped.label == plain.label
        assert overlapped.degraded == plain.degraded
        np.testing.assert_allclose(overlapped.probabilities, plain.probabilities, atol=1e-4)
    # Requests that shared a pass: the plain path runs each batch's items as one pass;
    # with overlap the RAEE items share theirs and the item that rides along runs alone.
    n = len(texts)
    assert [o.batch_group_size for o in got[False]] == [n + 1] * (n + 1) + [2, 2]
    assert [o.batch_group_size for o in got[True]] == [n] * n + [1] + [1, 1]
    raee = got[True][: len(texts)]
    assert [o.exit_layer for o in raee] == ([BEST_EXIT] * len(texts) if fail else EXITS)
    assert all(o.degraded == fail for o in raee)
