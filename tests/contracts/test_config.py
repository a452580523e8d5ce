from __future__ import annotations

from pathlib import Path

import pytest

from contracts.config import load_settings
from contracts.exceptions import ConfigError


def test_defaults_work_locally() -> None:
    s = load_settings(environ={})
    assert s.kafka.bootstrap is None  # embedded broker
    assert s.feature_store.type == "memory"
    assert s.scoring.grpc_port == 50051 and s.metrics.port == 9108


def test_file_then_environment(tmp_path: Path) -> None:
    f = tmp_path / "fs.yaml"
    f.write_text("kafka:\n  partitions: 3\nscoring:\n  grpc_port: 6000\n")
    s = load_settings(f, environ={"FRAUDSCORE_GRPC_PORT": "7000", "KAFKA_BOOTSTRAP": "b:9092"})
    assert s.kafka.partitions == 3 and s.scoring.grpc_port == 7000 and s.kafka.bootstrap == "b:9092"


def test_redis_url_selects_redis_and_stays_secret() -> None:
    s = load_settings(environ={"REDIS_URL": "redis://:hunter2@r:6379/0"})
    assert s.feature_store.type == "redis"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert s.feature_store.redis_url is not None
    assert s.feature_store.redis_url.get_secret_value().endswith("r:6379/0")


def test_nested_override_and_errors_name_fields() -> None:
    assert load_settings(environ={"FRAUDSCORE__KAFKA__PARTITIONS": "12"}).kafka.partitions == 12
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"FRAUDSCORE__KAFKA__PARTITONS": "1", "FRAUDSCORE_METRICS_PORT": "x"})
    assert "kafka.partitons" in str(info.value) and "metrics.port" in str(info.value)


def test_settings_are_frozen() -> None:
    s = load_settings(environ={})
    with pytest.raises(Exception, match="frozen"):
        s.scoring.grpc_port = 1  # type: ignore[misc]


def test_missing_or_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad, environ={})
