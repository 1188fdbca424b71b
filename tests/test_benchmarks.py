"""The benchmark scripts run end to end, as documented, on the demo task (a smoke test, not a timing).

Speed is never asserted here: the machines are shared. These tests check that
each script runs on a real store and reports numbers that are consistent with
themselves.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from evaluation.runner import classify_both
from raee.tasks import TaskSpec
from raee.v1 import inference_pb2_grpc
from raee_cli.demo import DEMO_DIR
from raee_cli.pair import ServicePair

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(name: str, *args: str, out: Path) -> dict[str, Any]:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args, "--out", str(out)],
        check=True,
        cwd=ROOT,
        capture_output=True,
        timeout=600,
    )
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_retrieval_overhead_breaks_down_into_its_steps(served_home: Path, tmp_path: Path) -> None:
    args = ("--task", "demo-sentiment", "--data", str(DEMO_DIR / "test.jsonl"), "--home", str(served_home))
    sizes = ("--batch", "1", "--batch", "4")
    report = run_benchmark("retrieval_overhead", *args, "--limit", "8", *sizes, out=tmp_path / "r.json")
    assert report["queries"] == 8
    assert set(report["by_batch_size"]) == {"1", "4"}
    for measured in report["by_batch_size"].values():
        steps = measured["p50_ms_per_query"]
        assert set(steps) == {"resolve", "encode", "search", "aggregate", "full_forward"}
        assert all(ms > 0 for ms in steps.values())
        assert measured["retrieval_ms_per_query"] == pytest.approx(
            sum(steps[s] for s in ("resolve", "encode", "search", "aggregate")), abs=1e-2
        )
        assert measured["overhead"] == pytest.approx(sum(measured["overhead_by_step"].values()))
    assert report["overhead"] == report["by_batch_size"]["1"]["overhead"]


def test_grpc_latency_reports_both_modes(served_home: Path, tmp_path: Path) -> None:
    args = ("--task", "demo-sentiment", "--data", str(DEMO_DIR / "test.jsonl"), "--home", str(served_home))
    small = ("--limit", "4", "--clients", "2", "--per-client", "2", "--rounds", "1")
    report = run_benchmark("grpc_latency", *args, *small, out=tmp_path / "g.json")
    assert report["requests_batch1"] == 4
    p50 = report["batch1_p50_ms"]
    assert report["latency_ratio_p50"] == pytest.approx(p50["raee"] / p50["full"])
    assert set(report["throughput_2_clients_rps"]) == {"raee", "full"}


def test_a_benchmark_refuses_invalid_data(served_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "no such label"}\n')
    args = ("--task", "demo-sentiment", "--data", str(bad), "--home", str(served_home))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_benchmark("retrieval_overhead", *args, out=tmp_path / "r.json")
    assert b"1 invalid rows" in failed.value.stderr


def test_protocols_benchmark_compares_every_protocol(served_home: Path, tmp_path: Path) -> None:
    report = run_benchmark("protocols", "--home", str(served_home), "--rounds", "8", out=tmp_path / "p.json")
    protocols = {"native", "oip_grpc", "oip_rest", "rest_classify"}
    assert set(report["batch1_p50_ms"]) == protocols and report["same_labels"]
    assert report["p50_ratio_to_native"]["native"] == 1.0


def test_fixed_costs_compares_before_and_after(served_home: Path, tmp_path: Path) -> None:
    args = ("--task", "demo-sentiment", "--data", str(DEMO_DIR / "test.jsonl"), "--home", str(served_home))
    small = (
        "--limit",
        "3",
        "--repeats",
        "2",
        "--overlap",
        "--clients",
        "2",
        "--per-client",
        "2",
        "--rounds",
        "1",
    )
    report = run_benchmark("fixed_costs", *args, *small, out=tmp_path / "f.json")
    assert report["requests"] == 3
    medians = report["p50_ms"]
    assert set(medians) == {
        "batcher_ms",
        "tokenise_ms",
        "predict_ms",
        "classify_ms",
        "retrieval_ms",
        "classify_fixed_ms",
        "fixed_forward_ms",
    }
    assert set(medians["classify_ms"]) == {"before", "after"}
    assert report["ratio_after_over_before"]["predict_ms"] == pytest.approx(
        medians["predict_ms"]["after"] / medians["predict_ms"]["before"]
    )
    assert set(report["overlap"]["batch1_p50_ms"]) == {"off", "on"}


def test_forward_passes_fits_the_cost_of_rows_and_depth(tmp_path: Path) -> None:
    report = run_benchmark("forward_passes", "--repeats", "1", out=tmp_path / "p.json")
    assert len(report["p50_ms"]) == 25  # rows 1, 2, 4, 8, 16 × depths 0, 2, 6, 12, 18
    fit = report["fit_ms"]
    assert fit["row_layer"] > 0  # every row through every layer costs time
    assert report["layer_cost_in_rows"] == pytest.approx(fit["layer"] / fit["row_layer"], abs=0.01)
    assert set(report["per_row_ms_at_full_depth"]) == {"1", "2", "4", "8", "16"}
    # A deeper pass over the same rows takes longer than the embedding alone.
    assert report["p50_ms"]["16x18"] > report["p50_ms"]["16x0"]


def test_row_exits_times_one_pass_against_a_pass_per_exit(tmp_path: Path) -> None:
    args = ("--pair", "cloze/trec", "--sizes", "6", "--batches", "2")
    report = run_benchmark("row_exits", *args, out=tmp_path / "r.json")
    assert report["drops_rows"] is True
    (pair,) = report["pairs"].values()
    timing = pair["6"]
    assert timing["exits_above_0_mean"] >= 2  # TREC's rows spread: one pass really ran
    assert timing["one_pass_batches"] >= 1 and timing["ratio_one_pass"] > 0
    assert timing["p50_ms"]["rows"] > 0 and timing["p50_ms"]["per_exit"] > 0
    assert report["ratio_mean"] == {"6": timing["ratio"]}


def test_compute_floor_counts_the_encoders_work_and_bounds_its_time(
    served_home: Path, tmp_path: Path
) -> None:
    args = ("--task", "demo-sentiment", "--data", str(DEMO_DIR / "test.jsonl"), "--home", str(served_home))
    report = run_benchmark("compute_floor", *args, "--limit", "5", "--repeats", "3", out=tmp_path / "f.json")
    encoder, backbone = report["encoder"], report["backbone"]
    # MiniLM-L6 (hidden 384, feed-forward 1536, 6 layers): each token meets four 384-square
    # weights and the two feed-forward ones in every layer. Those are what is counted (the
    # CPU attention kernel has no FLOP formula); the pooler adds 2 * 384² a query.
    weights_only = 2 * 6 * encoder["tokens_p50"] * (4 * 384 * 384 + 2 * 384 * 1536)
    assert weights_only <= encoder["flops_per_query_p50"] <= 1.01 * weights_only
    # Gemma-3-270M does far more arithmetic per query than the encoder.
    assert backbone["flops_per_query_p50"] > 5 * encoder["flops_per_query_p50"]
    for model in (encoder, backbone):  # GFLOP/s from FLOPs and milliseconds: units within reason
        assert 1e-3 < model["share_of_peak"] < 10
        assert 0.1 < model["gflops_at_p50"] < 10_000
    # At a large product's rate, with nothing but its weight products to do, the encoder
    # takes less than it does as served; so does its share of a full forward.
    assert 0 < report["encode_ms_at_peak"] < encoder["p50_ms"]
    assert 0 < report["encoder_floor"] < report["encoder_measured"] < 1


async def test_cheaper_encoders_rescoring_reproduces_the_services(
    served_home: Path, pair: ServicePair, demo_spec: TaskSpec, tmp_path: Path
) -> None:
    """Its fp32 column is RAEE's score as the services answer; each cheaper encoder moves some neighbours."""
    report = await asyncio.to_thread(
        run_benchmark,
        "cheaper_encoders",
        "--task-dir",
        str(DEMO_DIR),
        "--home",
        str(served_home),
        "--timing-texts",
        "3",
        "--candidate",
        "int8",
        "--candidate",
        "layers3",
        out=tmp_path / "q.json",
    )
    (name, measured), *_ = report["pairs"].items()
    assert name == f"custom/{demo_spec.name}"
    tests = [json.loads(line) for line in (DEMO_DIR / "test.jsonl").read_text().splitlines() if line.strip()]
    async with grpc.aio.insecure_channel(pair.inference_address) as channel:
        answers = await classify_both(
            inference_pb2_grpc.InferenceServiceStub(channel), demo_spec.name, [t["text"] for t in tests]
        )
    gold = [demo_spec.label_index(t["label"]) for t in tests]
    assert measured["score"]["fp32"] == round(demo_spec.score(answers["raee"].labels, gold), 2)
    scores = measured["score"]
    assert set(scores) == {"fp32", "int8", "layers3"}
    for candidate in ("int8", "layers3"):
        assert measured["delta"][candidate] == pytest.approx(scores[candidate] - scores["fp32"], abs=0.011)
        assert 0 < measured["neighbour_overlap"][candidate] < 1  # some neighbours move, not all
        assert report["summary"][candidate]["largest_change"]["pair"] == name
    # Half the layers: the key costs less than the services' encoder.
    assert report["summary"]["layers3"]["encode_speed_ratio_over_fp32"] < 1


PAIR_ARGS = ("--pair", "cloze/sst2", "--train-limit", "24")
LOAD_ARGS = (*PAIR_ARGS, "--clients", "4", "--per-client", "1", "--rounds", "1")


def checked_load_report(report: dict[str, Any], base: str, other: str, key: str) -> dict[str, Any]:
    """The one pair's entry of a load benchmark's report, its ratios checked against its rates."""
    (pair,) = report["pairs"].values()
    rps = pair["rps"]
    assert set(rps) == {base, other} and all(rate > 0 for s in rps.values() for rate in s.values())
    for mode in ("raee", "full"):
        # Both from requests/s rounded to two decimals.
        assert pair[key][mode] == pytest.approx(rps[other][mode] / rps[base][mode], rel=3e-2)
    for setting in (base, other):
        assert pair["raee_over_full"][setting] == pytest.approx(
            rps[setting]["raee"] / rps[setting]["full"], rel=3e-2
        )
    assert report["mean"][key] == pair[key]
    return dict(pair)


@pytest.mark.parametrize(
    ("name", "base", "other", "key"),
    [("batches_in_flight", "1", "2", "two_over_one"), ("cohorts", "off", "on", "on_over_off")],
)
def test_a_load_benchmark_times_both_settings_in_both_modes(
    name: str, base: str, other: str, key: str, tmp_path: Path
) -> None:
    report = run_benchmark(name, *LOAD_ARGS, "--home", str(tmp_path / "home"), out=tmp_path / "r.json")
    checked_load_report(report, base, other, key)


def test_encoder_spin_times_both_policies_at_batch_1_and_under_load(tmp_path: Path) -> None:
    home = ("--home", str(tmp_path / "home"))
    report = run_benchmark("encoder_spin", *LOAD_ARGS, *home, "--texts", "4", out=tmp_path / "r.json")
    pair = checked_load_report(report, "never", "lone", "lone_over_never")
    batch1 = pair["batch1_p50_ms"]
    for policy in ("never", "lone"):
        # The encoder's own time is part of a kNN call's, which is part of nothing else.
        assert 0 < batch1[policy]["encode"] < batch1[policy]["knn"]
        assert batch1[policy]["raee"] > 0
    for part in ("raee", "knn", "encode"):
        ratio = batch1["lone"][part] / batch1["never"][part]
        assert pair["batch1_lone_over_never"][part] == pytest.approx(ratio, rel=1e-2)
    assert report["mean"]["batch1_lone_over_never"] == pair["batch1_lone_over_never"]


def test_openmp_spin_times_each_spin_count_in_its_own_process(tmp_path: Path) -> None:
    args = ("--texts", "2", "--rounds", "2", "--spin-count", "300000", "--spin-count", "1000")
    report = run_benchmark("openmp_spin", *args, out=tmp_path / "s.json")
    # Each child checked that it ran with its own count (or the run would have failed).
    assert set(report["times_ms"]) == set(report["per_round_ms"]) == {"300000", "1000"}
    for count_rounds in report["per_round_ms"].values():
        assert len(count_rounds) == 2
        for times in count_rounds:
            assert 0 < times["shallow"] < times["full"] < times["full_batch16"]
            assert times["encode_after_forward"] > 0 and times["encode_rested"] > 0
            # Ingest's step reads every exit of the batch, so it runs at least the full pass.
            assert times["ingest_forward"] > times["shallow"] and times["ingest_encode"] > 0
    ratios = report["over_300000"]["1000"]
    rounds = report["per_round_ms"]
    per_round = [a["full"] / b["full"] for a, b in zip(rounds["1000"], rounds["300000"], strict=True)]
    assert ratios["full"] == pytest.approx(sum(per_round) / 2, rel=1e-6)  # the median of two rounds
