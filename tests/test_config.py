from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raee.logs import JsonFormatter
from raee.settings import (
    ALL_SETTINGS,
    InferenceSettings,
    PathSettings,
    RetrievalSettings,
    SettingsError,
    env_keys,
    load,
)
from raee_cli.flags import add_settings_flags, settings_from_args
from raee_cli.settings_reference import effective, render

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_then_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(InferenceSettings).max_batch == 16
    monkeypatch.setenv("RAEE_MAX_BATCH", "32")
    monkeypatch.setenv("RAEE_RETRIEVAL_ADDR", "retrieval:6000")
    assert load(InferenceSettings).max_batch == 32
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, InferenceSettings)
    args = parser.parse_args(["--max-batch", "8", "--max-wait-ms", "2.5"])
    settings = settings_from_args(InferenceSettings, args)
    assert (settings.max_batch, settings.max_wait_ms, settings.retrieval_addr) == (8, 2.5, "retrieval:6000")


def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAEE_RETRIEVAL_PORT", "fifty")
    with pytest.raises(SettingsError, match=r"\$RAEE_RETRIEVAL_PORT: .*valid integer.*'fifty'"):
        load(RetrievalSettings)
    monkeypatch.setenv("RAEE_RETRIEVAL_PORT", "70000")
    with pytest.raises(SettingsError, match=r"\$RAEE_RETRIEVAL_PORT: .*65535"):
        load(RetrievalSettings)


def test_ranges_and_cross_field_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"\$RAEE_MAX_BATCH: .*greater than or equal to 1"):
        load(InferenceSettings, max_batch=0)
    monkeypatch.setenv("RAEE_MAX_K", "4")
    with pytest.raises(SettingsError, match=r"RAEE_DEFAULT_K .* must not exceed RAEE_MAX_K"):
        load(RetrievalSettings)
    monkeypatch.setenv("RAEE_LOG_FORMAT", "xml")
    from raee.settings import LogSettings

    with pytest.raises(SettingsError, match=r"\$RAEE_LOG_FORMAT"):
        load(LogSettings)


def test_only_documented_names_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A field called ``home`` must not pick up $HOME, nor ``port`` an unprefixed variable.
    monkeypatch.setenv("HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("RAEE_PORT", "1234")
    assert load(PathSettings).home == Path(".raee")
    assert load(RetrievalSettings).port == 50051
    monkeypatch.setenv("RAEE_HOME", str(tmp_path))
    assert load(RetrievalSettings).home == tmp_path
    monkeypatch.setenv("RAEE_HOME", "")  # empty counts as unset
    assert load(RetrievalSettings).home == Path(".raee")


def test_secrets_stay_out_of_reprs_errors_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAEE_AUTH_TOKEN", "s3cret-token")
    settings = load(InferenceSettings)
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    assert settings.auth_token.get_secret_value() == "s3cret-token"
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, InferenceSettings)
    flags = {action.dest for action in parser._actions}
    assert "max_batch" in flags
    assert not flags & {"auth_token", "retrieval_token"}


def test_json_logs_carry_extras_and_exceptions() -> None:
    record = logging.LogRecord("raee.test", logging.ERROR, __file__, 1, "failed %s", ("x",), None)
    record.task = "sst2"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert (entry["level"], entry["logger"], entry["message"], entry["task"]) == (
        "ERROR",
        "raee.test",
        "failed x",
        "sst2",
    )
    assert "RuntimeError: boom" in entry["exception"]


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    """docs/configuration.md lists exactly the settings' variables, with their defaults (both ways)."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert render() in doc, (
        "docs/configuration.md is stale: run raee config --write-reference docs/configuration.md"
    )
    documented = set(re.findall(r"^\| `((?:RAEE|OTEL)_[A-Z0-9_]+)` \|", doc, flags=re.M))
    assert documented == env_keys()
    assert {kind.__name__ for kind in ALL_SETTINGS} <= set(re.findall(r"`(\w+Settings)`", doc))


def test_raee_config_shows_the_effective_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAEE_MAX_BATCH", "7")
    monkeypatch.setenv("RAEE_AUTH_TOKEN", "hush")
    lines = effective()
    assert "RAEE_MAX_BATCH=7" in lines and "RAEE_AUTH_TOKEN=(set)" in lines
    assert "RAEE_CLIENT_TOKEN=(unset)" in lines
    assert not any("hush" in line for line in lines)
    assert {line.split("=")[0] for line in lines} == env_keys()


def test_connection_age_options() -> None:
    from raee.serving.server import connection_age_options

    assert connection_age_options(0.0, 10.0) == []
    assert connection_age_options(30.0, 10.0) == [
        ("grpc.max_connection_age_ms", 30000),
        ("grpc.max_connection_age_grace_ms", 10000),
    ]
    with pytest.raises(ValueError, match="max_connection_age_s"):
        connection_age_options(-1.0, 0.0)
    with pytest.raises(ValueError, match="max_connection_age_grace_s"):
        connection_age_options(30.0, -1.0)


def _spin_count_seen(code: str, **env: str) -> str:
    """GOMP_SPINCOUNT as a fresh interpreter sees it after running ``code``."""
    environ = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | env
    code += "; import os; print(os.environ.get('GOMP_SPINCOUNT', 'unset'))"
    done = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


def test_importing_raee_shortens_openmps_spin_before_torch_loads_it() -> None:
    import raee

    assert _spin_count_seen("import raee") == raee.OPENMP_SPIN_COUNT == "10000"
    # The CLI imports raee before anything loads torch, or libgomp would not see it.
    assert _spin_count_seen("import raee_cli.main, sys; assert 'torch' not in sys.modules") == "10000"
    assert _spin_count_seen("import raee", GOMP_SPINCOUNT="300000") == "300000"  # the user's value wins
    # Once torch has loaded libgomp the variable has no effect, so raee does not claim one.
    assert _spin_count_seen("import torch, raee") == "unset"
