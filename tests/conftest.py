"""Shared fixtures: real services (broker, Redis, Redis Cluster, moto, kinesalite) and settings factories.

Fixtures are factories where tests need several of a kind. Services are session-scoped and
cleaned per test (topics are unique per test; Redis is flushed) so the suite stays fast.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.config import Settings, load_settings
from tests.services import KafkaBroker, Kinesalite, MotoServer, RedisCluster, RedisServer, free_port

# boto3 talks to local servers only; never pick up real credentials.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker]:
    """One embedded Kafka-compatible broker for the session."""
    broker = KafkaBroker().start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of our own (so tests may stop and restart it)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of a flushed Redis."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A real 3-master Redis Cluster on loopback ports."""
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto in server mode (DynamoDB, Kinesis, S3 over HTTP)."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[Kinesalite]:
    """kinesalite, a local Kinesis API server that closes parent shards on a split or merge (moto does
    not). Missing (run scripts/install_kinesalite.sh): skipped locally, failed under CI=true."""
    server = Kinesalite().start()
    yield server
    server.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix for topic, table and group names."""
    return uuid.uuid4().hex[:8]


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Build Settings rooted in a temporary data dir; keyword args are dotted-path overrides."""

    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "scoring.grpc_port": free_port(),
            "metrics.port": free_port(),
        }
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return load_settings(environ={}, overrides=base)

    return factory
