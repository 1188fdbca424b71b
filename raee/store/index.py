"""The exit store's index policy, shared by the embedded and the server backend.

A version of fewer than :data:`INDEX_THRESHOLD` points is searched exactly: a
full scan is then fast and its neighbours are the true ones. From that size
on, the version gets an HNSW graph (``m`` / ``ef_construct`` below) over int8
scalar-quantised vectors, searched with ``hnsw_ef`` candidates and rescored
with the original float vectors, so the returned similarities are exact.

The numbers come from ``make scale`` (benchmarks/scale.py, docs/results/scale.json):
see docs/architecture.md, "Index policy".

Qdrant expresses its thresholds in kilobytes of vector data, not points:
:func:`threshold_kb` converts for a task's vector size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Versions with at least this many points are searched through HNSW, smaller ones exactly.
INDEX_THRESHOLD = 20_000


@dataclass(frozen=True)
class IndexPolicy:
    threshold: int = INDEX_THRESHOLD
    hnsw_m: int = 16
    hnsw_ef_construct: int = 128
    hnsw_ef: int = 256
    quantization: str = "int8"  # or "none"
    quantile: float = 0.99
    rescore: bool = True
    oversampling: float = 4.0

    @property
    def quantized(self) -> bool:
        return self.quantization == "int8"

    def exact_for(self, points: int) -> bool:
        """Whether a version of ``points`` points is searched exactly."""
        return points < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_POLICY = IndexPolicy()


def threshold_kb(points: int, dim: int) -> int:
    """Qdrant's thresholds are in KB of float32 vectors: ``points`` vectors of ``dim``, rounded up."""
    return max(1, -(-points * dim * 4 // 1024))
