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
