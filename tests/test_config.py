from __future__ import annotations

import argparse
import json
import logging

import pytest

from raee.logs import JsonFormatter
from raee.serving.config import InferenceConfig, RetrievalConfig, add_flags, load


def test_defaults_then_env_then_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(InferenceConfig).max_batch == 16
    monkeypatch.setenv("RAEE_MAX_BATCH", "32")
    monkeypatch.setenv("RAEE_RETRIEVAL_ADDR", "retrieval:6000")
    assert load(InferenceConfig).max_batch == 32
    parser = argparse.ArgumentParser()
    add_flags(parser, InferenceConfig)
    config = load(InferenceConfig, parser.parse_args(["--max-batch", "8", "--max-wait-ms", "2.5"]))
    assert (config.max_batch, config.max_wait_ms, config.retrieval_addr) == (8, 2.5, "retrieval:6000")


def test_bad_env_values_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAEE_RETRIEVAL_PORT", "fifty")
    with pytest.raises(ValueError, match=r"\$RAEE_RETRIEVAL_PORT: 'fifty' is not a valid int"):
        load(RetrievalConfig)


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


def test_every_setting_is_documented() -> None:
    import dataclasses
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    for config_type in (RetrievalConfig, InferenceConfig):
        for item in dataclasses.fields(config_type):
            assert f"`{item.metadata['env']}`" in doc, item.metadata["env"]


def test_secrets_have_no_flag() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, InferenceConfig)
    flags = {action.dest for action in parser._actions}
    assert "auth_token" not in flags
    assert "retrieval_token" not in flags
    assert "max_batch" in flags


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
