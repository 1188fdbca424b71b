"""`raee eval` end to end on a task folder (the shipped demo's layout), through real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from evaluation.methods import DEGENERATE, METHODS
from evaluation.runner import DegradedAnswersError, call_order, classify_both
from raee.backbone import Backbone
from raee.encoder import QueryEncoder
from raee.settings import InferenceSettings, RetrievalSettings
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2_grpc
from raee_cli.demo import DEMO_DIR
from raee_cli.main import main
from raee_cli.pair import start_process_pair
from tests.conftest import DEMO_TEST_TEXTS, start_demo_pair


def test_eval_writes_the_summary_table_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, home = tmp_path / "results", tmp_path / "home"
    args = ["eval", "--task", "none", "--task-dir", str(DEMO_DIR), "--out", str(out), "--home", str(home)]
    # The ingest benchmark's report, when `make results` has written it there, is carried over.
    out.mkdir()
    (out / "ingest_and_query.json").write_text(json.dumps({"ingest_vs_forward_with_head": 1.25}))
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_layers"] == 18
    assert summary["backbone"].startswith("gemma-3-270m/L18/")
    methods = summary["families"]["custom"]["demo-sentiment"]
    assert set(methods) == {*METHODS, *DEGENERATE}
    for values in methods.values():
        assert set(values) == {"score", "avg_exit", "p50_ms"}
        assert 0.0 <= values["score"] <= 100.0
        assert 0.0 <= values["avg_exit"] <= 18.0
        assert values["p50_ms"] > 0
    assert methods["full"]["avg_exit"] == 18.0
    assert methods["oracle"]["score"] >= max(methods[m]["score"] for m in ("full", "static", "confidence"))
    speed = summary["speed"]
    shape = {"latency_ratio_p50", "throughput_ratio_16", "retrieval_overhead", "ingest_vs_forward"}
    assert {"overhead_vs_fixed", "retrieval_overhead_grpc", "throughput_ratio_classify_batch"} <= set(speed)
    assert shape <= set(speed)
    assert speed["ingest_vs_forward"] == 1.25
    assert all(speed[key] > 0 for key in shape)
    p50 = methods["raee"]["p50_ms"] / methods["full"]["p50_ms"]
    assert speed["latency_ratio_p50"] == pytest.approx(p50, rel=0.01)  # one task: its own ratio
    # The overhead is the sum of its parts, each measured inside the services.
    assert set(speed["retrieval_overhead_by_part"]) == {"encode", "search", "aggregate"}
    assert speed["retrieval_overhead"] == pytest.approx(sum(speed["retrieval_overhead_by_part"].values()))
    assert 0 < speed["retrieval_overhead_by_part"]["encode"] < speed["retrieval_overhead"]
    for name in ("results.md", "details.json", "exit_histogram_custom.png", "score_vs_depth.png"):
        assert (out / name).stat().st_size > 0
    assert "| demo-sentiment |" in capsys.readouterr().out
    detail = json.loads((out / "details.json").read_text())["custom"]["demo-sentiment"]
    assert set(detail["ablations"]) == {"raee_informative"}
    assert all(0 <= exit_ <= 18 for exit_ in detail["constant_exits"])
    assert "raee_informative" in (out / "results.md").read_text()
    assert detail["degraded"] == {"raee": 0, "full": 0}
    # RAEE beyond the layers it runs: the same exits run in-process, without retrieval or services.
    in_process = detail["in_process_p50_ms"]
    assert 0 < in_process["in_process_raee_exit"] <= in_process["in_process_full"] * 1.5
    beyond = methods["raee"]["p50_ms"] - in_process["in_process_raee_exit"]
    assert speed["overhead_vs_fixed"] == pytest.approx(beyond / in_process["in_process_full"], rel=0.02)
    timed = detail["speed_sample"]["test_indices"]
    assert len(set(timed)) == len(timed) and all(0 <= i < detail["test_examples"] for i in timed)
    assert timed != sorted(timed), "the speed sample is shuffled, not the file's first rows"

    # A second run reuses the published version: same spec, backbone and data.
    assert main(args) == 0
    details = json.loads((out / "details.json").read_text())
    assert details["custom"]["demo-sentiment"]["reused_version"] is True


def test_each_text_times_the_ways_in_a_new_order_with_raee_before_its_in_process_twin() -> None:
    ways = ["raee", "full", "knn", "static", "oracle", "in_process_raee_exit", "in_process_full"]
    rng = np.random.default_rng(29)
    orders = [call_order(ways, rng) for _ in range(64)]
    for order in orders:
        assert sorted(order) == sorted(ways)
        assert order.index("raee") < order.index("in_process_raee_exit")
    assert len({tuple(order) for order in orders}) > 50

    def predecessors(way: str) -> set[str | None]:
        return {order[order.index(way) - 1] if order.index(way) else None for order in orders}

    # No way always follows the same one (a fixed order put RAEE after a full forward every time).
    assert predecessors("raee") == {*ways, None} - {"raee", "in_process_raee_exit"}
    assert predecessors("in_process_raee_exit") == set(ways) - {"in_process_raee_exit"}
    for way in ("knn", "full", "in_process_full"):
        assert predecessors(way) == {*ways, None} - {way}


async def test_degraded_raee_answers_fail_the_eval(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec
) -> None:
    """With the retrieval service gone, RAEE answers come back degraded: the eval refuses them."""
    pair = await start_demo_pair(served_home, gemma, encoder, retrieval_timeout_ms=2000.0)
    try:
        async with grpc.aio.insecure_channel(pair.inference_address) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            healthy = await classify_both(stub, demo_spec.name, DEMO_TEST_TEXTS[:4])
            assert healthy["raee"].degraded == healthy["full"].degraded == 0
            await pair.retrieval.stop(0)
            with pytest.raises(DegradedAnswersError, match="4 raee answers were degraded"):
                await classify_both(stub, demo_spec.name, DEMO_TEST_TEXTS[:4])
    finally:
        await pair.inference.stop(0)


async def test_the_retrieval_service_can_run_as_its_own_process(
    served_home: Path, gemma: Backbone, encoder: QueryEncoder, demo_spec: TaskSpec, tmp_path: Path
) -> None:
    """`raee eval --retrieval-process`: the deployed split, with the same answers as one process."""
    inference = InferenceSettings(port=0, metrics_port=0, http_port=-1)
    split = await start_process_pair(
        RetrievalSettings(port=0, metrics_port=0, home=served_home), inference, backbone=gemma
    )
    child = split.retrieval.process
    try:
        assert child.pid != os.getpid() and child.poll() is None
        together = await start_demo_pair(served_home, gemma, encoder)
        try:
            answers = []
            for started in (split, together):
                async with grpc.aio.insecure_channel(started.inference_address) as channel:
                    stub = inference_pb2_grpc.InferenceServiceStub(channel)
                    answers.append(await classify_both(stub, demo_spec.name, DEMO_TEST_TEXTS))
            assert answers[0]["raee"].degraded == 0
            assert answers[0]["raee"].labels == answers[1]["raee"].labels
            assert answers[0]["raee"].exits == answers[1]["raee"].exits
        finally:
            await together.stop()
    finally:
        await split.stop()
    assert child.returncode == 0  # SIGTERM: a graceful stop


async def test_a_retrieval_process_that_cannot_start_says_why(gemma: Backbone, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-encoder"
    settings = RetrievalSettings(port=0, metrics_port=0, home=tmp_path, encoder=str(missing))
    with pytest.raises(RuntimeError, match="retrieval process exited with 1") as raised:
        split = await start_process_pair(settings, InferenceSettings(port=0, metrics_port=0), backbone=gemma)
        await split.stop(0)  # only if it started after all
    assert "no-such-encoder" in str(raised.value)  # the child's own error, from its log


def test_the_retrieval_process_ends_with_the_process_that_started_it(
    served_home: Path, tmp_path: Path
) -> None:
    """Killed outright (no finally runs), the parent leaves no retrieval service behind."""
    script = (
        "import asyncio, os, sys, time\n"
        "from raee.settings import RetrievalSettings\n"
        "from raee_cli.pair import start_retrieval_process\n"
        "async def main():\n"
        f"    settings = RetrievalSettings(port=0, metrics_port=0, home={str(served_home)!r})\n"
        "    child = await start_retrieval_process(settings)\n"
        "    print(child.process.pid, flush=True)\n"
        "    time.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(child, 0)  # serving
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(child):
            time.sleep(0.2)
        assert not _alive(child)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent (init) has not reaped it yet
