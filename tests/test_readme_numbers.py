"""Every result the README states equals the results file it comes from (docs/results).

The README's tables are written by hand for reading; this test keeps them from going
stale: rerun `make results` (or the benchmark named in the row) and it fails until the
README says the same.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from evaluation.methods import METHODS
from evaluation.report import averages

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()
RESULTS = ROOT / "docs" / "results"
NUMBER = r"(?<![\w.])[−-]?\d+(?:\.\d+)?"  # not the 50 of "p50"


def result(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((RESULTS / name).read_text())
    return data


def table_rows(caption: str, text: str = README) -> dict[str, list[str]]:
    """The rows of the table in ``text`` whose header starts with ``| caption``: first cell -> the others."""
    start = re.search(rf"^\| {re.escape(caption)}", text, flags=re.M)
    assert start is not None, f"no table starts with {caption!r}"
    lines = text[start.start() :].splitlines()
    rows = {}
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("*")] = cells[1:]
    return rows


def numbers(cell: str) -> list[float]:
    return [float(n.replace("−", "-")) for n in re.findall(NUMBER, cell.replace("*", ""))]


@pytest.mark.parametrize(
    ("caption", "family"), [("cloze templates", "cloze"), ("paper's templates", "paper")]
)
def test_the_comparison_tables_are_summary_json(caption: str, family: str) -> None:
    tasks = result("summary.json")["families"][family]
    rows = table_rows(caption)
    assert set(rows) == {*tasks, "average"}
    for task, cells in rows.items():
        scores = averages(tasks) if task == "average" else tasks[task]
        for method, cell in zip(METHODS, cells, strict=True):
            shown = numbers(cell)
            assert shown[0] == pytest.approx(scores[method]["score"], abs=0.051), (task, method)
            if len(shown) > 1:  # an average exit in brackets, at the precision shown
                decimals = len(cell.split("(")[1].split(")")[0].partition(".")[2])
                assert shown[1] == pytest.approx(scores[method]["avg_exit"], abs=0.51 * 10**-decimals)


def test_the_targets_table_is_the_speed_block_and_scale_json() -> None:
    speed = result("summary.json")["speed"]
    million = result("scale.json")["sizes"]["1000000"]
    rows = table_rows("Target")
    assert numbers(rows["batch-1 p50 latency RAEE / FULL ≤ 0.30"][0]) == [
        round(speed["latency_ratio_p50"], 2)
    ]
    assert numbers(rows["16-client throughput RAEE / FULL ≥ 4.0"][0]) == [
        round(speed["throughput_ratio_16"], 2)
    ]
    overhead = numbers(rows["retrieval overhead ≤ 4 % of a full forward"][0])
    parts = speed["retrieval_overhead_by_part"]
    expected = [speed["retrieval_overhead"], parts["encode"], parts["search"], parts["aggregate"]]
    assert overhead == [round(100 * value, 1) for value in expected]
    beyond = numbers(rows["RAEE beyond the layers it runs ≤ 10 % of a full forward"][0])
    assert beyond == [round(100 * speed["overhead_vs_fixed"], 1)]
    assert numbers(rows["1M points: top-12 p50 ≤ 3 ms"][0]) == [round(million["p50_ms"], 2)]
    assert numbers(rows["1M points: exit as with exact search ≥ 0.99"][0]) == [
        round(million["exit_agreement"], 3)
    ]


def test_the_measured_rows_are_their_benchmark_files() -> None:
    rows = table_rows("What")
    ingest = result("ingest_and_query.json")
    assert numbers(rows["Ingest throughput ÷ plain HF forward (`logits_to_keep=1`), 2000 SST-2 rows"][0]) == [
        round(ingest["ingest_vs_forward_with_head"], 2)
    ]
    assert numbers(rows["Ingest throughput ÷ transformer body alone (no head)"][0]) == [
        round(ingest["ingest_vs_forward_body_only"], 2)
    ]
    assert numbers(rows["Top-12 query on the 2000-point task it wrote, embedded store"][0]) == [
        round(ingest["query_top12_p50_ms"], 2),
        round(ingest["query_top12_p95_ms"], 2),
        round(ingest["query_top12_batched_ms_per_query"], 2),
    ]
    load = result("load.json")
    shown = numbers(rows["Sustained load, 16 clients for 60 s (RAEE)"][0])
    assert shown == [
        load["requests"],
        round(load["requests_per_s"]),
        round(load["p50_ms"]),
        round(load["p99_ms"]),
        0,
    ]
    overhead = result("retrieval_overhead.json")["by_batch_size"]
    one, sixteen = overhead["1"], overhead["16"]
    steps = one["p50_ms_per_query"]
    shown = numbers(
        rows["Retrieval overhead in process, one query at a time (SST-2 cloze task, 320 test texts)"][0]
    )
    assert shown == [
        round(steps["encode"], 1),
        round(steps["search"], 1),
        round(steps["aggregate"] + steps["resolve"], 1),
        round(one["retrieval_ms_per_query"], 1),
        round(steps["full_forward"], 1),
        round(one["overhead"], 2),
        16,
        round(sixteen["retrieval_ms_per_query"], 1),
        round(sixteen["p50_ms_per_query"]["full_forward"], 1),
        round(sixteen["overhead"], 2),
    ]
    floor = result("compute_floor.json")
    encoder = floor["encoder"]
    shown = numbers(
        rows["The query encoder's arithmetic floor (128 SST-2 cloze prompt keys, 24 tokens p50)"][0]
    )
    assert shown == [
        round(encoder["flops_per_query_p50"] / 1e9, 2),
        round(encoder["p50_ms"], 2),
        round(encoder["gflops_at_p50"], 1),
        round(encoder["share_of_peak"], 2),
        1024,
        round(floor["gemm_peak_gflops"]),
        round(floor["encoder_floor"], 3),
        round(floor["encoder_floor_at_shape_peak"], 3),
        round(floor["shape_peak_gflops"]),
    ]
    assert (floor["queries"], encoder["tokens_p50"]) == (128, 24)
    latency = result("grpc_latency.json")
    shown = numbers(rows["Batch-1 latency over gRPC, 300 SST-2 test texts, RAEE vs FULL"][0])
    p50, p95 = latency["batch1_p50_ms"], latency["batch1_p95_ms"]
    assert shown[:3] == [round(p50["raee"], 1), round(p50["full"], 1), round(latency["latency_ratio_p50"], 2)]
    assert shown[3:5] == [round(p95["raee"], 1), round(p95["full"], 1)]


def test_the_scale_row_is_scale_json() -> None:
    sizes = result("scale.json")["sizes"]
    shown = numbers(
        table_rows("What")["Exit store at 100k and 1M synthetic 384-d points (HNSW over int8, rescored)"][0]
    )
    million, hundred_k = sizes["1000000"], sizes["100000"]
    assert shown[1:] == [
        round(million["build_s"]),
        round(million["bytes_per_point"]),
        12,
        round(million["p50_ms"], 2),
        round(million["p99_ms"], 2),
        12,
        round(million["recall_at_12"], 3),
        round(million["exit_agreement"], 3),
        100,
        round(hundred_k["p50_ms"], 2),
        12,
        round(hundred_k["recall_at_12"], 1),
    ]


def test_the_cheaper_encoders_table_is_its_benchmark_file() -> None:
    """docs/architecture.md's table of cheaper query encoders (issue 11's accuracy rule)."""
    report = result("cheaper_encoders.json")
    rows = table_rows("candidate", ARCHITECTURE)
    shown = {name: numbers(" ".join(cells)) for name, cells in rows.items()}
    labels = {
        "int8": "int8 (ONNX Runtime dynamic, per-channel weights)",
        "layers4": "the first 4 of MiniLM's 6 layers",
        "layers3": "the first 3 of MiniLM's 6 layers",
        "layers2": "the first 2 of MiniLM's 6 layers",
    }
    assert set(report["summary"]) == set(labels)
    for candidate, label in labels.items():
        summary = report["summary"][candidate]
        deltas = [pair["delta"][candidate] for pair in report["pairs"].values()]
        assert shown[label] == [
            round(summary["encode_speed_ratio_over_fp32"], 2),
            round(summary["neighbour_overlap"], 2),
            round(summary["mean_delta"], 2),
            min(deltas),
            max(deltas),
            len(summary["pairs_outside_tolerance"]),
            len(report["pairs"]),
        ]
