"""The query encoder's ONNX Runtime path: a one-time export of the weights, cached and checked.

The graph holds the whole sentence-transformers pipeline after tokenisation (the
transformer, mean pooling over the attention mask, L2 normalisation), with
dynamic batch and sequence axes. It is exported once per set of weights, under
the cache (``RAEE_CACHE_DIR``) in a folder keyed by the weights' fingerprint and
the export recipe, written under a temporary name and renamed when complete, the
same pattern as the backbone's converted copy (:mod:`raee.model_loading`). The
ONNX file's SHA-256 is recorded beside it and checked on every load, so a
truncated or altered file is rebuilt rather than run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer

from raee.errors import EncoderLoadError
from raee.model_loading import cache_dir, file_sha256

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, pooling, opset), so old exports are not reused.
EXPORT_RECIPE = "st-mean-l2/opset17/v1"
_OPSET = 17
_MODEL_FILE = "model.onnx"
_DIGEST_FILE = "model.onnx.sha256"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _MeanPooledUnit(torch.nn.Module):
    """The transformer, mean pooling over real tokens and L2 normalisation, as one graph."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def export_folder(name: str, fingerprint: str) -> Path:
    """Where the ONNX export of the encoder ``name`` with these weights lives in the cache."""
    key = hashlib.sha256(f"{fingerprint}:{EXPORT_RECIPE}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return cache_dir() / "onnx" / f"{safe}-{fingerprint}-{key}"


def cached_export(model: SentenceTransformer, name: str, fingerprint: str) -> Path:
    """The checked ONNX file for ``model``, exporting it on first use or when the cached one is damaged."""
    target = export_folder(name, fingerprint)
    if _verified(target):
        return target / _MODEL_FILE
    if target.exists():
        logger.warning("encoder: the cached ONNX export at %s fails its SHA-256 check; rebuilding it", target)
        try:
            shutil.rmtree(target)
        except OSError as exc:
            raise EncoderLoadError(
                f"encoder: the cached ONNX export at {target} is damaged and cannot be removed ({exc}); "
                "delete it or point RAEE_CACHE_DIR at a writable folder"
            ) from exc
    _export(model, target)
    if not _verified(target):  # pragma: no cover - only if the file changes while we write it
        raise EncoderLoadError(f"encoder: the ONNX export at {target} failed its check right after writing")
    return target / _MODEL_FILE


def _verified(folder: Path) -> bool:
    model, digest = folder / _MODEL_FILE, folder / _DIGEST_FILE
    if not (model.is_file() and digest.is_file()):
        return False
    return file_sha256(model) == digest.read_text().strip()


def _export(model: SentenceTransformer, target: Path) -> None:
    logger.info("exporting the query encoder to ONNX once; cached at %s", target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".exporting-", dir=target.parent))
    except OSError as exc:  # a read-only cache (a baked image) without the export
        raise EncoderLoadError(
            f"encoder: no ONNX export at {target} and the cache is not writable ({exc}); "
            "run `raee prepare` with this RAEE_CACHE_DIR, or set RAEE_ENCODER_RUNTIME=torch"
        ) from exc
    try:
        onnx_path = staging / _MODEL_FILE
        _trace(model, onnx_path)
        (staging / _DIGEST_FILE).write_text(file_sha256(onnx_path) + "\n")
        _readable_by_all(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same export first
            if not _verified(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _trace(model: SentenceTransformer, path: Path) -> None:
    transformer = model[0].auto_model
    if not isinstance(transformer, torch.nn.Module):
        raise EncoderLoadError(f"encoder: cannot export {type(model[0]).__name__}: no transformer module")
    unit = _MeanPooledUnit(transformer).eval()
    example = model.tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"embedding": {0: "batch"}}
    # The TorchScript exporter needs no onnxscript. Its tracer warns about Python branches on
    # shapes inside BERT's attention; they do not depend on the batch or sequence length here
    # (tests/test_encoder.py compares batches of every shape against sentence-transformers).
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            unit,
            tuple(example[name] for name in INPUTS),
            str(path),
            input_names=list(INPUTS),
            output_names=["embedding"],
            dynamic_axes=dynamic,
            opset_version=_OPSET,
            dynamo=False,
        )


def _readable_by_all(folder: Path) -> None:
    """mkdtemp makes the folder 0700; an export made at image build time (root) is read by the services'
    uid."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)


def session(path: Path, threads: int | None = None, *, spin: bool = False) -> ort.InferenceSession:
    """An ONNX Runtime CPU session with every graph optimisation and torch's thread count by default.

    ``spin``: the pool's threads spin-wait between the operators of a run and stop when
    it returns. One query then takes about 0.8 of the time (the threads need not be woken
    operator by operator), but only in a process where nothing else wants the cores:
    right after a torch forward pass, torch's own idle threads and these spin against
    each other and both slow down (``benchmarks/encoder_runtime.py``, ``spinning``).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Small graphs gain nothing from inter-op parallelism. Intra-op threads: as many as torch
    # uses, which honours OMP_NUM_THREADS (k8s sets it to the CPU limit; the affinity mask
    # would count every core of the node).
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Never spin once a run is over: idle pool threads would take the cores that the store
    # search, gRPC and (in one process) torch need next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, batch: dict[str, np.ndarray]) -> np.ndarray:
    """``(n, dim)`` float32 unit vectors for one tokenised batch."""
    feeds = {name: np.ascontiguousarray(batch[name], dtype=np.int64) for name in INPUTS}
    (vectors,) = sess.run(["embedding"], feeds)
    return np.asarray(vectors, dtype=np.float32)
