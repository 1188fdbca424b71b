"""Command-line flags derived from the settings models: one ``--flag`` per setting but secrets."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, get_args

from raee.defaults import DEFAULT_BACKBONE, DEFAULT_ENCODER, DEFAULT_ENCODER_RUNTIME, EncoderRuntime
from raee.settings import ModelSettings, RaeeSettings, SettingsT, StoreSettings, env_name, is_secret, load


def add_settings_flags(parser: argparse.ArgumentParser, kind: type[RaeeSettings]) -> None:
    """``--max-batch`` for ``max_batch``; unset flags stay ``None`` so the environment still counts.

    Secrets get no flag: flags show in ``ps``.
    """
    for name, field in kind.model_fields.items():
        if is_secret(field):
            continue
        parser.add_argument(
            "--" + name.replace("_", "-"),
            default=None,
            help=f"{field.description} (${env_name(field)}, default {field.default!r})",
        )


def settings_from_args(kind: type[SettingsT], args: argparse.Namespace, **overrides: Any) -> SettingsT:
    """Defaults < environment < flags < ``overrides``; pydantic parses and checks the flag strings."""
    values = {name: getattr(args, name, None) for name in kind.model_fields}
    values.update({name: value for name, value in overrides.items() if value is not None})
    return load(kind, **values)


def add_store_flags(parser: argparse.ArgumentParser, *, url: bool = True) -> None:
    group = parser.add_argument_group("exit store (embedded by default)")
    where = group.add_mutually_exclusive_group()
    if url:
        where.add_argument("--store-url", help="Qdrant URL ($RAEE_QDRANT_URL); local:PATH for local mode")
    where.add_argument("--home", type=Path, help="embedded store's data folder ($RAEE_HOME, ./.raee)")


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--backbone", help=f"({DEFAULT_BACKBONE}; $RAEE_BACKBONE)")
    group.add_argument("--encoder", help=f"({DEFAULT_ENCODER}; $RAEE_ENCODER)")
    group.add_argument(
        "--encoder-runtime",
        choices=get_args(EncoderRuntime),
        help=f"({DEFAULT_ENCODER_RUNTIME}; $RAEE_ENCODER_RUNTIME) torch: sentence-transformers itself",
    )


def models_from_args(args: argparse.Namespace) -> ModelSettings:
    return load(
        ModelSettings, backbone=args.backbone, encoder=args.encoder, encoder_runtime=args.encoder_runtime
    )


def store_from_args(args: argparse.Namespace) -> StoreSettings:
    """The store the flags name, else ``$RAEE_QDRANT_URL``, else the embedded store in ``$RAEE_HOME``."""
    return load(StoreSettings, store_url=getattr(args, "store_url", None), home=args.home)
