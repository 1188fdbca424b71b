"""The query encoder's ONNX Runtime path against sentence-transformers, on the real MiniLM.

Both runtimes report the same encoder id, so stores ingested with one serve the
other: that holds only while their vectors agree, which these tests pin.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import numpy as np
import pytest

from raee.backbone import Backbone
from raee.batching import length_runs
from raee.defaults import DEFAULT_ENCODER
from raee.encoder import ONNX_TOLERANCE, RUN_COST_TOKENS, QueryEncoder
from raee.encoder_onnx import export_folder
from raee.errors import EncoderLoadError, EncoderMismatchError
from raee.serving.errors import status_of
from raee.wire.retrieval import ExitQuery
from retrieval_service.engine import RetrievalEngine

SST2_TEST = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / "sst2" / "test.jsonl"
EDGE_CASES = ["", "   padded with spaces   ", "ÉCLAIR, naïve café!", "word " * 400]  # the last is truncated
K = 12


@pytest.fixture(scope="module")
def texts() -> list[str]:
    rows = [json.loads(line) for line in SST2_TEST.read_text().splitlines()[:230]]
    return [str(row["text"]) for row in rows]


@pytest.fixture(scope="module")
def reference() -> QueryEncoder:
    return QueryEncoder(runtime="torch")


def test_the_default_runtime_is_onnx_with_the_reference_id(
    encoder: QueryEncoder, reference: QueryEncoder
) -> None:
    assert encoder.runtime == "onnx"
    assert encoder.model is None  # the torch weights were only needed for the export
    assert encoder.id == reference.id
    assert encoder.max_seq_length == 256


def test_onnx_vectors_equal_sentence_transformers_within_the_tolerance(
    encoder: QueryEncoder, reference: QueryEncoder, texts: list[str]
) -> None:
    corpus = texts[:200] + EDGE_CASES
    got, want = encoder.encode(corpus), reference.encode(corpus)
    assert got.shape == want.shape == (len(corpus), 384)
    assert got.dtype == np.float32
    assert float(np.abs(got - want).max()) < ONNX_TOLERANCE  # measured: 2.2e-7
    assert float((got * want).sum(axis=1).min()) > 1 - 1e-6
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("run_cost", [RUN_COST_TOKENS, 10**6], ids=["by-length", "one-padded-batch"])
def test_batch_shapes_do_not_change_the_vectors(
    encoder: QueryEncoder, texts: list[str], run_cost: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The graph's batch and sequence axes are dynamic: one text alone equals it padded in a batch."""
    monkeypatch.setattr(encoder, "run_cost_tokens", run_cost)  # 10**6: every text padded to 256
    batch = texts[:16] + EDGE_CASES
    together = encoder.encode(batch)
    alone = np.stack([encoder.encode([text])[0] for text in batch])
    assert float(np.abs(together - alone).max()) < ONNX_TOLERANCE


def _padded_cost(lengths: list[int], runs: list[list[int]], run_cost: int) -> int:
    return sum(run_cost + len(run) * max(lengths[i] for i in run) for run in runs)


@pytest.mark.parametrize("seed", range(20))
def test_length_runs_partition_the_texts_at_least_cost(seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = [int(n) for n in rng.integers(1, 60, size=int(rng.integers(1, 9)))]
    max_size, run_cost = int(rng.integers(1, 5)), int(rng.integers(0, 30))
    runs = length_runs(lengths, max_size, run_cost)
    assert sorted(i for run in runs for i in run) == list(range(len(lengths)))
    assert all(1 <= len(run) <= max_size for run in runs)
    # Against every way of cutting the texts, sorted by length, into runs (brute force).
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    cheapest = min(
        _padded_cost(lengths, [order[a:b] for a, b in itertools.pairwise((0, *cuts, len(order)))], run_cost)
        for count in range(len(order))
        for cuts in itertools.combinations(range(1, len(order)), count)
        if all(b - a <= max_size for a, b in itertools.pairwise((0, *cuts, len(order))))
    )
    assert _padded_cost(lengths, runs, run_cost) == cheapest


def test_length_runs_trade_padding_against_runs() -> None:
    lengths = [5, 40, 6, 41]
    assert length_runs(lengths, 64, 0) == [[0], [2], [1], [3]]  # runs are free: no padding at all
    assert length_runs(lengths, 64, 10**6) == [[0, 2, 1, 3]]  # runs are dear: one padded batch
    assert length_runs(lengths, 64, 8) == [[0, 2], [1, 3]]  # similar lengths together


def test_top_k_neighbours_agree(encoder: QueryEncoder, reference: QueryEncoder, texts: list[str]) -> None:
    corpus, queries = texts[:200], texts[200:230]
    got = encoder.encode(queries) @ encoder.encode(corpus).T
    want = reference.encode(queries) @ reference.encode(corpus).T
    for row_got, row_want in zip(got, want, strict=True):
        top_got = np.argsort(-row_got, kind="stable")[:K]
        top_want = np.argsort(-row_want, kind="stable")[:K]
        # A swap is allowed only across a tie within the tolerance at the k-th place.
        kth = row_want[top_want[-1]]
        assert set(top_got) == set(top_want) or all(row_want[i] >= kth - ONNX_TOLERANCE for i in top_got)


def test_the_export_is_cached_checked_and_rebuilt_when_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: QueryEncoder
) -> None:
    monkeypatch.setenv("RAEE_CACHE_DIR", str(tmp_path))
    probe = ["a gorgeous , witty , seductive movie ."]
    first = QueryEncoder()
    path = first.onnx_path
    assert path.parent == export_folder(first.name, first.id.rsplit("/", 1)[-1])
    assert path.is_relative_to(tmp_path)
    assert not [p for p in path.parent.parent.iterdir() if p.name.startswith(".exporting-")]
    written = path.stat().st_mtime_ns

    second = QueryEncoder()
    assert second.onnx_path == path
    assert path.stat().st_mtime_ns == written  # read, not exported again

    with path.open("r+b") as stream:  # flip bytes inside the weights: still a loadable size
        stream.seek(path.stat().st_size // 2)
        stream.write(b"\x00" * 64)
    rebuilt = QueryEncoder()
    assert rebuilt.onnx_path == path
    assert path.stat().st_mtime_ns != written  # the damage was detected and the export redone
    np.testing.assert_allclose(rebuilt.encode(probe), encoder.encode(probe), atol=ONNX_TOLERANCE)


def op_types(path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


def test_the_cached_export_is_the_fused_graph(encoder: QueryEncoder) -> None:
    ops = op_types(encoder.onnx_path)
    assert {"Attention", "SkipLayerNormalization", "BiasGelu", "EmbedLayerNormalization"} <= ops
    assert "Softmax" not in ops  # every layer's attention is one operator


def test_a_fusion_beyond_the_tolerance_keeps_the_plain_graph(tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from raee import encoder_onnx
    from raee.encoder import _resolve

    model = SentenceTransformer(str(_resolve(DEFAULT_ENCODER)[0]), device="cpu", local_files_only=True)
    plain = tmp_path / "plain.onnx"
    encoder_onnx.trace(model, plain)
    assert "Attention" not in op_types(plain)
    assert model[0].auto_model.config._attn_implementation != "eager"  # the export restores it

    strict, loose = tmp_path / "strict.onnx", tmp_path / "loose.onnx"
    strict.write_bytes(plain.read_bytes())
    loose.write_bytes(plain.read_bytes())
    encoder_onnx.fuse_if_exact(model, strict, tolerance=0.0)  # no graph is that exact (measured 2.6e-7)
    assert strict.read_bytes() == plain.read_bytes()
    encoder_onnx.fuse_if_exact(model, loose, tolerance=ONNX_TOLERANCE)
    assert "Attention" in op_types(loose)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loose.onnx", "plain.onnx", "strict.onnx"]


def test_a_task_of_another_encoder_is_failed_precondition_naming_the_reingest(encoder: QueryEncoder) -> None:
    store = SimpleNamespace(
        get_task=lambda task: SimpleNamespace(encoder_id="all-MiniLM-L6-v2/d384/000000000000")
    )
    engine = RetrievalEngine(store, encoder)  # type: ignore[arg-type]
    (answer,) = engine.answer([ExitQuery(task="sst2", k=K, text="fine")])
    assert isinstance(answer, EncoderMismatchError)
    code, message = status_of(answer)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "raee ingest" in message
    assert encoder.id in message
    assert "000000000000" in message


def test_an_unwritable_cache_without_the_export_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RAEE_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(EncoderLoadError, match="raee prepare"):
        QueryEncoder()


def test_the_runtime_is_a_setting_and_a_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from raee.settings import ModelSettings, RetrievalSettings, SettingsError, load
    from raee_cli.flags import models_from_args
    from raee_cli.main import build_parser

    assert load(ModelSettings).encoder_runtime == "onnx"
    monkeypatch.setenv("RAEE_ENCODER_RUNTIME", "torch")
    assert load(RetrievalSettings).encoder_runtime == "torch"
    args = build_parser().parse_args(["prepare", "--encoder-runtime", "onnx"])
    assert models_from_args(args).encoder_runtime == "onnx"  # the flag over the environment
    monkeypatch.setenv("RAEE_ENCODER_RUNTIME", "tensorrt")
    with pytest.raises(SettingsError, match=r"RAEE_ENCODER_RUNTIME"):
        load(ModelSettings)


def spin_setting(session: Any) -> str:
    return str(session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning"))


def test_the_shared_encoder_spins_for_a_lone_text_only_and_the_vectors_do_not_change(
    encoder: QueryEncoder, texts: list[str]
) -> None:
    # The encoder beside the backbone (`raee up`, the eval): a lone query is when the cores
    # are most likely idle; batches come under load, when the backbone wants them.
    assert encoder.spin == "lone"
    assert spin_setting(encoder.onnx_session) == "0"
    assert spin_setting(encoder.lone_session) == "1"
    assert encoder._runner(1).args == (encoder.lone_session,)  # type: ignore[attr-defined]
    assert encoder._runner(2).args == (encoder.onnx_session,)  # type: ignore[attr-defined]
    lone = np.stack([encoder.encode([text])[0] for text in texts[:20]])
    try:
        encoder.spin = "never"
        assert encoder._runner(1).args == (encoder.onnx_session,)  # type: ignore[attr-defined]
        still = np.stack([encoder.encode([text])[0] for text in texts[:20]])
    finally:
        encoder.spin = "lone"
    np.testing.assert_array_equal(lone, still)
    with pytest.raises(ValueError, match="spin policy True"):
        QueryEncoder(spin=True)  # type: ignore[arg-type]  # the old boolean
    never = QueryEncoder(spin="never")  # ingest's: it encodes batches, one session is enough
    assert never.lone_session is never.onnx_session
    assert spin_setting(never.onnx_session) == "0"


async def test_raee_up_gives_its_encoder_the_lone_spin_whatever_the_setting(
    gemma: Backbone, tmp_path: Path
) -> None:
    from raee.settings import InferenceSettings, RetrievalSettings
    from raee_cli.pair import start_pair

    retrieval = RetrievalSettings(home=tmp_path, port=0, metrics_port=0)
    assert retrieval.encoder_spin  # meant for the retrieval service alone
    inference = InferenceSettings(port=0, metrics_port=0, http_port=-1)
    pair = await start_pair(retrieval, inference, backbone=gemma)
    try:
        assert pair.retrieval.servicer.engine is not None
        shared = pair.retrieval.servicer.engine.encoder
        assert shared.spin == "lone"
        assert spin_setting(shared.onnx_session) == "0"
    finally:
        await pair.stop(0)


async def test_the_retrieval_service_alone_spins_its_encoder_and_the_vectors_do_not_change(
    encoder: QueryEncoder, texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from raee.settings import RetrievalSettings, load
    from retrieval_service import server as retrieval_server

    assert spin_setting(encoder.onnx_session) == "0"  # the shared encoder's batches
    settings = RetrievalSettings(home=tmp_path, port=0, metrics_port=0)
    assert settings.encoder_spin
    server = await retrieval_server.start(settings)
    try:
        assert server.servicer.engine is not None
        spinning = server.servicer.engine.encoder
        assert spinning.spin == "always"
        assert spin_setting(spinning.onnx_session) == "1"
        np.testing.assert_array_equal(spinning.encode(texts[:40]), encoder.encode(texts[:40]))
    finally:
        await server.stop(0)
    monkeypatch.setenv("RAEE_ENCODER_SPIN", "false")
    assert not load(RetrievalSettings).encoder_spin
