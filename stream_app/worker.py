"""The stream worker: the consumers one process runs, wired to the shared decision pipeline.

Roles (``fraudscore worker --role …``; several may share a process):

* ``orders``  — orders → features → score → rules → ``decisions`` + ``actions`` (the hot path);
* ``labels``  — labelled outcomes → label-derived features (its own consumer group, so a bulk
  chargeback import never delays orders);
* ``webhook`` — ``actions`` → an HTTP endpoint, with retries and dead-lettering.

The source is Kafka (consumer groups) or Kinesis (shard leases in DynamoDB), chosen by
``stream.source``; outputs go to the source's transport unless ``stream.sink`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from contracts.config import Settings
from feature_state.stores.base import FeatureStore
from scoring.pipeline import DecisionPipeline
from stream_app.exceptions import BrokerUnavailable
from stream_app.kafka import bootstrap, client_kwargs
from stream_app.kafka_source import ConsumerStats, KafkaBatchConsumer
from stream_app.ledger import DecisionLedger, MemoryLedger, RedisLedger
from stream_app.policy import ErrorPolicy, dead_letter_everything
from stream_app.processor import LabelsProcessor, OrdersProcessor
from stream_app.sinks import KafkaSink, KinesisSink, RecordSink

log = logging.getLogger(__name__)

Role = Literal["orders", "labels", "webhook"]
ROLES: tuple[Role, ...] = ("orders", "labels", "webhook")


class Consumer(Protocol):
    stats: ConsumerStats

    async def run(self) -> None: ...

    def stop(self) -> None: ...


def make_ledger(settings: Settings) -> DecisionLedger:
    """A shared Redis ledger when the feature store is Redis, else an in-process one."""
    fs = settings.feature_store
    if fs.type in ("redis", "redis_cluster") and fs.redis_url is not None:
        return RedisLedger(fs.redis_url.get_secret_value(), cluster=fs.type == "redis_cluster",
                           ttl_s=settings.stream.ledger_ttl_s)
    return MemoryLedger()


async def kafka_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer tuned for batched publishing (``acks=all``; idempotence where the broker has it)."""
    producer = AIOKafkaProducer(
        **client_kwargs(settings.kafka),
        acks="all",
        enable_idempotence=settings.kafka.enable_idempotence,
        linger_ms=2,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30_000,
    )
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(settings.kafka)}: {exc}") from exc
    return producer


def kinesis_client(settings: Settings, service: str = "kinesis") -> Any:
    """A boto3 client for the Kinesis (or, for checkpoints, DynamoDB) endpoint in the settings."""
    import boto3
    from botocore.config import Config

    s = settings.stream
    if service == "kinesis":
        url = s.kinesis_endpoint_url
    else:
        url = s.kinesis_checkpoint_endpoint_url or s.kinesis_endpoint_url
    return boto3.client(service, region_name=s.kinesis_region, endpoint_url=url,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5,
                                      read_timeout=10, max_pool_connections=32))


@dataclass
class WorkerStats:
    """A summary across the worker's consumers (the live summary line and ``/stats``)."""

    orders: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"allow": 0, "review": 0, "challenge": 0, "block": 0})
    dead_letters: int = 0
    duplicates: int = 0
    labels: int = 0
    batches: int = 0
    retries: int = 0
    recent_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))


class StreamWorker:
    """Runs the configured roles until :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        pipeline: DecisionPipeline,
        store: FeatureStore,
        *,
        roles: Sequence[Role] = ("orders", "labels"),
        policy: ErrorPolicy = dead_letter_everything,
        ledger: DecisionLedger | None = None,
    ) -> None:
        unknown = [r for r in roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown worker roles {unknown}; known: {', '.join(ROLES)}")
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.roles = tuple(roles)
        self.policy = policy
        self.ledger = ledger or make_ledger(settings)
        self.consumers: dict[str, Consumer] = {}
        self.orders_processor: OrdersProcessor | None = None
        self.sinks: list[RecordSink] = []
        self._closers: list[Any] = []
        self._stop = asyncio.Event()
        self.started_at = time.time()
        self.ready = asyncio.Event()

    # ------------------------------------------------------------------ stats / health
    @property
    def stats(self) -> WorkerStats:
        out = WorkerStats()
        for role, c in self.consumers.items():
            st = c.stats
            out.batches += st.batches
            out.retries += st.retries
            out.dead_letters += st.dead_letters
            if role == "orders":
                out.orders += st.orders
                out.duplicates += st.duplicates
                for k, v in st.decisions.items():
                    out.decisions[k] = out.decisions.get(k, 0) + v
            elif role == "labels":
                out.labels += st.orders
        if self.orders_processor is not None:
            out.recent_latency_ms = self.orders_processor.recent_latency_ms
        return out

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while every consumer runs and none is stuck retrying a batch."""
        detail: dict[str, Any] = {"roles": list(self.roles), "source": self.settings.stream.source}
        ok = True
        for role, c in self.consumers.items():
            st = c.stats
            detail[role] = {"batches": st.batches, "events": st.events, "retries": st.retries,
                            "abandoned": st.abandoned, "assigned": st.assigned, "last_error": st.last_error}
        if not self.consumers:
            ok = False
            detail["status"] = "starting"
        return ok, detail

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        self._stop.set()
        for c in self.consumers.values():
            c.stop()

    def _sink_kind(self) -> str:
        s = self.settings.stream
        return s.source if s.sink == "auto" else s.sink

    async def _make_sink(self) -> RecordSink:
        if self._sink_kind() == "kinesis":
            sink: RecordSink = KinesisSink(kinesis_client(self.settings))
        else:
            sink = KafkaSink(await kafka_producer(self.settings))
        self.sinks.append(sink)
        return sink

    async def _build(self) -> None:
        s = self.settings
        topics = s.kafka.topics
        source = s.stream.source
        for role in self.roles:
            sink = await self._make_sink()
            if role == "orders":
                self.orders_processor = OrdersProcessor(self.pipeline, topics, self.ledger, policy=self.policy,
                                                        source=source)
                processor: Any = self.orders_processor
            elif role == "labels":
                processor = LabelsProcessor(self.store, topics, policy=self.policy, source=source)
            else:
                from stream_app.webhook import WebhookProcessor

                sink_kind: Literal["kafka", "kinesis"] = "kinesis" if self._sink_kind() == "kinesis" else "kafka"
                processor = WebhookProcessor(s.stream.webhook, topics, policy=self.policy, source=sink_kind)
                self._closers.append(processor.close)
            self.consumers[role] = self._consumer(role, processor, sink)

    def _consumer(self, role: Role, processor: Any, sink: RecordSink) -> Consumer:
        s = self.settings
        # orders and labels come from the source; the webhook reads actions where they were published
        kinesis = s.stream.source == "kinesis" if role != "webhook" else self._sink_kind() == "kinesis"
        if kinesis:
            from stream_app.kinesis_source import KinesisBatchConsumer

            stream = {"orders": s.stream.kinesis_stream, "labels": s.stream.kinesis_labels_stream,
                      "webhook": s.kafka.topics.actions}[role]
            if stream is None:
                raise ValueError("the labels role on Kinesis needs stream.kinesis_labels_stream")
            return KinesisBatchConsumer(s, stream=stream, processor=processor, sink=sink, name=role)
        group = s.kafka.consumer_group
        topic = s.kafka.topics.orders
        if role == "labels":
            group, topic = s.stream.labels_group or f"{group}-labels", s.kafka.topics.labels
        elif role == "webhook":
            group, topic = f"{group}-webhook", s.kafka.topics.actions
        return KafkaBatchConsumer(s, topic=topic, group_id=group, processor=processor, sink=sink, name=role)

    async def run(self) -> None:
        """Run every role until :meth:`stop` (or one of them fails, which is re-raised)."""
        try:
            await self._build()
            # Everything built so far (model, rules, clients) lives as long as the process: move it
            # out of the collector's reach so full collections stay short (fewer latency spikes).
            gc.collect()
            gc.freeze()
            tasks = [asyncio.create_task(c.run(), name=f"stream-{role}") for role, c in self.consumers.items()]
            self.ready.set()
            stop_wait = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([*tasks, stop_wait], return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
            for c in self.consumers.values():
                c.stop()
            await asyncio.gather(*tasks, return_exceptions=True)
            stop_wait.cancel()
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
        finally:
            for close in self._closers:
                with contextlib.suppress(Exception):
                    await close()
            for sink in self.sinks:
                with contextlib.suppress(Exception):
                    await sink.close()
            with contextlib.suppress(Exception):
                await self.ledger.close()


#: The name ``fraudscore up`` has used since the walking skeleton.
OrdersWorker = StreamWorker
