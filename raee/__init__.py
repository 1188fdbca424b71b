"""RAEE serve: retrieval-augmented early exit, shared core.

The packages follow the data flow:

* :mod:`ingest` probes the backbone over a labelled corpus and writes exit
  information into the exit store (Qdrant);
* :mod:`retrieval_service` turns neighbours' exit information into an exit
  distribution;
* :mod:`inference_service` runs the backbone up to the chosen exit.

This package holds what all three share: task specs, the backbone, the query
encoder, exit information and the exit store.
"""

__version__ = "0.1.0"

import os as _os
import sys as _sys

# torch's OpenMP runtime (libgomp) lets its idle threads spin for 300,000 iterations
# after each parallel region, several milliseconds on this project's CPUs. Between
# forward passes a serving process runs the query encoder, the store and gRPC, and
# those spinning threads take their cores: on 2 cores a query key took about 12 ms
# right after a forward pass instead of about 6. 10,000 iterations still bridge the
# gaps between a forward pass's own operators (benchmarks/openmp_spin.py). libgomp reads the
# variable once, when torch loads it, hence here, before any raee module imports
# torch; a value the user set wins (docs/architecture.md, "The query encoder's runtime").
OPENMP_SPIN_COUNT = "10000"
if "torch" not in _sys.modules:
    _os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)
