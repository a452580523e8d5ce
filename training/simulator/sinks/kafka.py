"""Kafka target: the ``orders`` and ``labels`` topics through an aiokafka producer.

Orders are keyed by ``customer_id`` and labels by ``order_id`` (so one customer's orders, and all
labels of one order, stay in one partition, in order). Sends are batched by the producer
(``linger_ms``) and awaited per chunk, so a broker error surfaces within one chunk. Truth records
never go to Kafka; pass ``truth_dir`` to keep them in ``truth.jsonl`` (and ``summary.json``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from contracts.config import KafkaSettings
from training.simulator.exceptions import SinkError
from training.simulator.generator import Simulation
from training.simulator.records import SimEvent
from training.simulator.sinks.base import Driver, ProgressFn, SinkReport, StopFlag
from training.simulator.sinks.files import JsonlWriter, write_summary

#: Await outstanding sends once this many are in flight.
MAX_IN_FLIGHT = 20_000


@dataclass(frozen=True, kw_only=True)
class KafkaTarget:
    """Where and how to produce."""

    bootstrap: str
    orders_topic: str = "orders"
    labels_topic: str = "labels"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    enable_idempotence: bool = False
    create_topics: bool = True
    """create the two topics (``partitions`` each) when they are missing"""
    partitions: int = 6
    replication_factor: int = 1
    timeout_s: float = 30.0

    @classmethod
    def from_settings(cls, kafka: KafkaSettings, **overrides: Any) -> KafkaTarget:
        """The target described by the platform settings (the embedded broker's address when unset)."""
        target = cls(
            bootstrap=kafka.bootstrap or f"{kafka.embedded_host}:{kafka.embedded_port}",
            orders_topic=kafka.topics.orders,
            labels_topic=kafka.topics.labels,
            security_protocol=kafka.security_protocol,
            sasl_mechanism=kafka.sasl_mechanism,
            sasl_username=kafka.sasl_username,
            sasl_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            enable_idempotence=kafka.enable_idempotence,
            partitions=kafka.partitions,
            replication_factor=kafka.replication_factor,
        )
        return replace(target, **{k: v for k, v in overrides.items() if v is not None})

    def client_kwargs(self) -> dict[str, Any]:
        """Connection arguments for aiokafka clients."""
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap, "security_protocol": self.security_protocol}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw["ssl_context"] = ssl.create_default_context()
        if self.security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.sasl_mechanism or "PLAIN"
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password
        return kw


def _unreachable(target: KafkaTarget, exc: BaseException) -> SinkError:
    return SinkError(
        f"cannot reach Kafka at {target.bootstrap} ({exc.__class__.__name__}: {exc}); start the platform "
        "with `fraudscore up` or point KAFKA_BOOTSTRAP at a running broker"
    )


async def ensure_topics(target: KafkaTarget) -> None:
    """Create the orders and labels topics when they are missing."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**target.client_kwargs(), request_timeout_ms=int(target.timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), target.timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        raise _unreachable(target, exc) from None
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in (target.orders_topic, target.labels_topic) if t not in existing]
        if missing:
            try:
                await admin.create_topics(
                    [NewTopic(t, target.partitions, target.replication_factor) for t in dict.fromkeys(missing)]
                )
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise SinkError(f"creating topics on {target.bootstrap} failed: {exc}") from exc
    finally:
        await admin.close()


async def send_to_kafka(
    events: Iterable[SimEvent],
    target: KafkaTarget,
    *,
    rate: float | None = None,
    live: bool = False,
    stop: StopFlag | None = None,
    progress: ProgressFn | None = None,
    truth_dir: str | Path | None = None,
    max_batch: int = 2000,
) -> SinkReport:
    """Produce ``events`` to Kafka; returns what was sent. Raises :class:`SinkError` on broker trouble."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError, KafkaError

    if target.create_topics:
        await ensure_topics(target)
    producer = AIOKafkaProducer(
        **target.client_kwargs(),
        linger_ms=5,
        max_batch_size=512 * 1024,
        acks="all" if target.enable_idempotence else 1,
        enable_idempotence=target.enable_idempotence,
        request_timeout_ms=int(target.timeout_s * 1000),
    )
    try:
        await asyncio.wait_for(producer.start(), target.timeout_s)
    except (KafkaConnectionError, TimeoutError, OSError) as exc:
        await producer.stop()
        raise _unreachable(target, exc) from None
    report = SinkReport(target="kafka", outputs={"orders": target.orders_topic, "labels": target.labels_topic})
    truth = JsonlWriter(Path(truth_dir), streams=("truth",)) if truth_dir is not None else None
    if truth is not None:
        report.outputs["truth"] = str(truth.paths["truth"])
    driver = Driver(events, rate=rate, live=live, max_batch=max_batch, stop=stop, progress=progress)
    topics = {"orders": target.orders_topic, "labels": target.labels_topic}
    in_flight: list[asyncio.Future[Any]] = []
    batches = driver.batches()
    try:
        while True:
            # generate in a thread so a day's worth of encoding never stalls this event loop
            item = await asyncio.to_thread(next, batches, None)
            if item is None:
                break
            due, batch = item
            wait = driver.delay(due)
            if wait > 0:
                await asyncio.sleep(wait)
            for event in driver.prepare(batch):
                topic = topics.get(event.stream)
                if topic is not None:
                    in_flight.append(await producer.send(topic, event.value, key=event.key))
                elif truth is not None:
                    truth.write(event)
                else:
                    continue
                report.count(event)
            if len(in_flight) >= MAX_IN_FLIGHT:
                await asyncio.gather(*in_flight)
                in_flight.clear()
            driver.tick(report)
        await asyncio.gather(*in_flight)
        await producer.flush()
    except KafkaError as exc:
        raise SinkError(f"producing to {target.bootstrap} failed: {exc.__class__.__name__}: {exc}") from exc
    finally:
        await producer.stop()
        if truth is not None:
            truth.close()
    if truth is not None and isinstance(events, Simulation):
        write_summary(events, Path(truth_dir or ".") / "summary.json")
    return driver.finish(report)
