"""Kafka client settings and topic administration (aiokafka)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

from contracts.config import KafkaSettings
from stream_app.exceptions import BrokerUnavailable


def bootstrap(k: KafkaSettings) -> str:
    return k.bootstrap or f"{k.embedded_host}:{k.embedded_port}"


def client_kwargs(k: KafkaSettings) -> dict[str, Any]:
    """Connection arguments shared by producers, consumers and the admin client."""
    kw: dict[str, Any] = {"bootstrap_servers": bootstrap(k), "security_protocol": k.security_protocol}
    if k.security_protocol in ("SSL", "SASL_SSL"):
        kw["ssl_context"] = ssl.create_default_context()
    if k.security_protocol.startswith("SASL"):
        kw["sasl_mechanism"] = k.sasl_mechanism or "PLAIN"
        kw["sasl_plain_username"] = k.sasl_username
        kw["sasl_plain_password"] = k.sasl_password.get_secret_value() if k.sasl_password else None
    return kw


def all_topics(k: KafkaSettings) -> list[str]:
    t = k.topics
    return [t.orders, t.labels, t.decisions, t.actions, t.dead_letters, t.retrain_requests]


async def ensure_topics(k: KafkaSettings, timeout_s: float = 30.0) -> None:
    """Create every topic the platform uses (``k.partitions`` each) if missing."""
    admin = AIOKafkaAdminClient(**client_kwargs(k), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(k)}: {exc}") from None
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in all_topics(k) if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, k.partitions, k.replication_factor) for t in missing]
                )
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()


async def describe_topics(k: KafkaSettings, timeout_s: float = 30.0) -> list[tuple[str, int | None]]:
    """(topic, partitions or None when missing) for every platform topic."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**client_kwargs(k), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(consumer.start(), timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(k)}: {exc}") from None
    try:
        existing = await consumer.topics()
        return [(t, len(consumer.partitions_for_topic(t) or ()) if t in existing else None) for t in all_topics(k)]
    finally:
        await consumer.stop()
