"""The query encoder's ONNX Runtime path: a one-time export of the weights, cached and checked.

The graph holds the whole sentence-transformers pipeline after tokenisation (the
transformer, mean pooling over the attention mask, L2 normalisation), with
dynamic batch and sequence axes. It is exported once per set of weights, under
the cache (``RAEE_CACHE_DIR``) in a folder keyed by the weights' fingerprint and
the export recipe, written under a temporary name and renamed when complete, the
same pattern as the backbone's converted copy (:mod:`raee.model_loading`). The
ONNX file's SHA-256 is recorded beside it and checked on every load, so a
truncated or altered file is rebuilt rather than run.

The export traces the transformer's eager attention, whose pattern ONNX Runtime's
transformer optimiser recognises: it fuses each layer's attention, the bias+GELU
and the residual+LayerNorm pairs into single operators (about 690 nodes become 62).
That takes out most of the synchronisation between the intra-op threads, which is
what a short query on two cores mostly waits on: 0.90 of the time at batch 1, 0.94 at
16 (``benchmarks/encoder_runtime.py``, ``fusion``). The fused graph is kept only if it
agrees with the torch model within the caller's tolerance on a probe batch;
otherwise (an architecture whose pattern fuses wrongly) the plain graph is kept.
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
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer

from raee.errors import EncoderLoadError
from raee.model_loading import cache_dir, file_sha256

logger = logging.getLogger(__name__)

# Bump when the exported graph changes (inputs, pooling, opset), so old exports are not reused.
EXPORT_RECIPE = "st-mean-l2/opset17/eager-fused/v2"
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


def cached_export(model: SentenceTransformer, name: str, fingerprint: str, tolerance: float) -> Path:
    """The checked ONNX file for ``model``, exporting it on first use or when the cached one is damaged.

    ``tolerance``: the largest difference from the torch model's vector components that
    the fused graph may show on the probe batch; beyond it the unfused graph is kept.
    """
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
    _export(model, target, tolerance)
    if not _verified(target):  # pragma: no cover - only if the file changes while we write it
        raise EncoderLoadError(f"encoder: the ONNX export at {target} failed its check right after writing")
    return target / _MODEL_FILE


def _verified(folder: Path) -> bool:
    model, digest = folder / _MODEL_FILE, folder / _DIGEST_FILE
    if not (model.is_file() and digest.is_file()):
        return False
    return file_sha256(model) == digest.read_text().strip()


def _export(model: SentenceTransformer, target: Path, tolerance: float) -> None:
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
        trace(model, onnx_path)
        fuse_if_exact(model, onnx_path, tolerance)
        (staging / _DIGEST_FILE).write_text(file_sha256(onnx_path) + "\n")
        _readable_by_all(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same export first
            if not _verified(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _transformer(model: SentenceTransformer) -> Any:
    """The Hugging Face model inside ``model`` (typed ``Any``: its config and methods are untyped)."""
    transformer = model[0].auto_model
    if not isinstance(transformer, torch.nn.Module):
        raise EncoderLoadError(f"encoder: cannot export {type(model[0]).__name__}: no transformer module")
    return transformer


def trace(model: SentenceTransformer, path: Path, attention: str = "eager") -> None:
    """Export ``model`` to ``path`` as one unfused graph, tracing its ``attention`` implementation.

    Eager attention traces to the MatMul/Softmax pattern the optimiser fuses; the SDPA
    path (the transformer's default, and this module's export before fusion) traces to
    one it does not. Both compute the same vectors.
    """
    transformer = _transformer(model)
    unit = _MeanPooledUnit(transformer).eval()
    example = model.tokenizer(["an example", "a longer example sentence"], padding=True, return_tensors="pt")
    dynamic = {name: {0: "batch", 1: "sequence"} for name in INPUTS} | {"embedding": {0: "batch"}}
    # The TorchScript exporter needs no onnxscript. Its tracer warns about Python branches on
    # shapes inside BERT's attention; they do not depend on the batch or sequence length here
    # (tests/test_encoder.py compares batches of every shape against sentence-transformers).
    previous = transformer.config._attn_implementation
    transformer.set_attn_implementation(attention)
    try:
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
    finally:
        transformer.set_attn_implementation(previous)


_PROBE_TEXTS = (
    "a",
    "a short sentence",
    "a sentence that is rather longer than the others, so that the rest of the batch is padded",
)


def fuse_if_exact(model: SentenceTransformer, path: Path, tolerance: float) -> None:
    """Replace the graph at ``path`` by its fused form if that still agrees with the torch model."""
    config = _transformer(model).config
    fused_path = path.with_name("fused.onnx")
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = optimize_model(
            str(path),
            model_type="bert",
            num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
            hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            opt_level=0,
        )
        fused.save_model_to_file(str(fused_path))
        gap = _largest_gap(model, fused_path)
    except Exception as exc:  # any failure of the optional fusion keeps the plain graph
        logger.warning("encoder: the ONNX graph could not be fused (%s); keeping the plain graph", exc)
        fused_path.unlink(missing_ok=True)
        return
    if gap > tolerance:
        logger.warning(
            "encoder: the fused ONNX graph differs from the model by %.2g (> %.2g); keeping the plain graph",
            gap,
            tolerance,
        )
        fused_path.unlink()
        return
    os.replace(fused_path, path)


def _largest_gap(model: SentenceTransformer, path: Path) -> float:
    """Largest difference between the graph's vectors and the torch model's, alone and padded together."""
    unit = _MeanPooledUnit(_transformer(model)).eval()
    probe = session(path, threads=1)
    batches = [[text] for text in _PROBE_TEXTS] + [list(_PROBE_TEXTS)]
    gap = 0.0
    for texts in batches:
        encoded = model.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.inference_mode():
            want = unit(*(encoded[name] for name in INPUTS)).numpy()
        got = run(probe, {name: encoded[name].numpy() for name in INPUTS})
        gap = max(gap, float(np.abs(got - want).max()))
    return gap


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
