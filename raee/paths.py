"""Where RAEE keeps its data (the embedded store) and its model cache."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "RAEE_HOME"
CACHE_ENV = "RAEE_CACHE_DIR"


def raee_home(override: str | Path | None = None) -> Path:
    """The data folder of the embedded exit store: ``--home``, else ``$RAEE_HOME``, else ``./.raee``."""
    if override is not None:
        return Path(override).expanduser()
    return Path(os.environ.get(HOME_ENV, ".raee")).expanduser()


def cache_dir() -> Path:
    """Converted model weights live here: ``$RAEE_CACHE_DIR``, else ``~/.cache/raee``."""
    default = Path.home() / ".cache" / "raee"
    return Path(os.environ.get(CACHE_ENV, str(default))).expanduser()
