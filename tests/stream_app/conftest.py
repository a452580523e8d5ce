"""Fixtures of the stream tests: settings on the real broker, a small trained model, traffic."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from streamkit import labels_for, make_traffic

from contracts.config import Settings
from feature_state.definitions import load_feature_set
from tests.conftest import SettingsFactory
from tests.services import KafkaBroker


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small XGBoost champion trained once per session (models dir to copy)."""
    from training.train import train_and_register

    models = tmp_path_factory.mktemp("models")
    traffic = make_traffic(4000, seed=1, duplicate_rate=0, reorder_window_s=0)
    train_and_register(traffic.orders, labels_for(traffic.orders, every=20), load_feature_set(None), models,
                       rounds=20)
    return models


StreamSettingsFactory = Callable[..., Settings]


@pytest.fixture
def stream_settings(make_settings: SettingsFactory, kafka_broker: KafkaBroker, unique: str, tmp_path: Path,
                    trained_models: Path) -> StreamSettingsFactory:
    """Settings on the session broker with topics and groups unique to this test; the model is copied in."""
    data = tmp_path / "data"
    if not (data / "models").exists():
        shutil.copytree(trained_models, data / "models")

    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": str(data),
            "kafka.bootstrap": kafka_broker.bootstrap,
            "kafka.partitions": 4,
            "kafka.consumer_group": f"workers-{unique}",
            "stream.session_timeout_ms": 6000,
            "stream.heartbeat_interval_ms": 1000,
            "stream.max_batch": 1000,
            "stream.batch_retry_budget_s": 5.0,
        }
        for name in ("orders", "labels", "decisions", "actions", "dead_letters", "retrain_requests"):
            base[f"kafka.topics.{name}"] = f"{name.replace('_', '-')}-{unique}"
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return make_settings(**base)

    return factory


@pytest.fixture(scope="session")
def traffic_small() -> Any:
    return make_traffic(3000, seed=11, bad_every=150)
