"""The orders worker: consume micro-batches, decide, publish decisions and actions, then commit.

Per poll, per partition: decode every record (bad ones → dead-letter topic, never a stall),
decide the good ones through the shared :class:`~scoring.pipeline.DecisionPipeline` with
``apply=True`` (features updated idempotently), send decisions and actions, wait until the
broker has them, and only then commit the partition's offsets. A crash replays at most the
uncommitted batch; replays change no aggregate (idempotent per order id) and re-send decisions
with the same ``order_id`` (the consumers' idempotency key).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from contracts.config import Settings
from contracts.events import Action, Decision, Order, decode_label, decode_order, encode
from contracts.exceptions import ContractError
from feature_state.stores.base import FeatureStore
from monitoring import metrics
from scoring.pipeline import DecisionPipeline
from stream_app.deadletter import dead_letter, encode_dead_letter
from stream_app.kafka import client_kwargs

log = logging.getLogger(__name__)


def action_for(decision: Decision) -> Action | None:
    """The action a decision triggers (none for ``allow``)."""
    if decision.decision == "allow":
        return None
    rule = next(
        (m.name for m in decision.matched_rules if m.mode == "active" and m.action == decision.decision and not m.error),
        None,
    )
    reason = None if rule else f"model score {decision.score:.3f}" if decision.score is not None else "fallback"
    return Action(
        order_id=decision.order_id,
        action=decision.decision,
        decided_at=decision.decided_at or decision.event_time,  # type: ignore[arg-type]
        rule=rule,
        reason=reason,
    )


@dataclass
class WorkerStats:
    orders: int = 0
    decisions: dict[str, int] = field(default_factory=lambda: {"allow": 0, "review": 0, "challenge": 0, "block": 0})
    dead_letters: int = 0
    labels: int = 0
    batches: int = 0
    #: wall time from event time to decision (ms) of the most recent orders
    recent_latency_ms: deque[float] = field(default_factory=lambda: deque(maxlen=5000))


class OrdersWorker:
    """One member of the workers' consumer group."""

    def __init__(self, settings: Settings, pipeline: DecisionPipeline, store: FeatureStore) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.store = store
        self.topics = settings.kafka.topics
        self.stats = WorkerStats()
        self._stop = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None

    def stop(self) -> None:
        self._stop.set()

    async def _dead_letter(self, exc: BaseException, rec: ConsumerRecord) -> asyncio.Future:  # type: ignore[type-arg]
        assert self.producer is not None
        dl = dead_letter(exc, rec.value or b"", topic=rec.topic, partition=rec.partition, offset=rec.offset, key=rec.key)
        metrics.DEAD_LETTERS.labels(rec.topic, type(exc).__name__).inc()
        self.stats.dead_letters += 1
        log.warning("dead-lettered %s[%d]@%d: %s", rec.topic, rec.partition, rec.offset, dl.error[:300])
        return await self.producer.send(self.topics.dead_letters, encode_dead_letter(dl), key=rec.key)

    async def _orders(self, records: Sequence[ConsumerRecord]) -> list[asyncio.Future]:  # type: ignore[type-arg]
        assert self.producer is not None
        futures = []
        orders: list[Order] = []
        for rec in records:
            try:
                orders.append(decode_order(rec.value or b""))
            except ContractError as exc:
                futures.append(await self._dead_letter(exc, rec))
        if not orders:
            return futures
        decisions = await self.pipeline.decide(orders, source="stream", apply=True)
        now = time.time()
        for d in decisions:
            futures.append(await self.producer.send(self.topics.decisions, encode(d), key=d.order_id.encode()))
            self.stats.decisions[d.decision] += 1
            if d.event_time is not None:
                lag = max(0.0, now - d.event_time.timestamp())
                metrics.EVENT_TO_DECISION.observe(lag)
                self.stats.recent_latency_ms.append(lag * 1000.0)
            act = action_for(d)
            if act is not None:
                futures.append(await self.producer.send(self.topics.actions, encode(act), key=act.order_id.encode()))
        self.stats.orders += len(orders)
        metrics.BATCH_SIZE.observe(len(orders))
        return futures

    async def _labels(self, records: Sequence[ConsumerRecord]) -> list[asyncio.Future]:  # type: ignore[type-arg]
        futures = []
        labels = []
        for rec in records:
            try:
                labels.append(decode_label(rec.value or b""))
            except ContractError as exc:
                futures.append(await self._dead_letter(exc, rec))
        if labels:
            await self.store.apply_labels(labels)
            self.stats.labels += len(labels)
        return futures

    async def run(self) -> None:
        s = self.settings
        kw = client_kwargs(s.kafka)
        self.consumer = AIOKafkaConsumer(
            self.topics.orders,
            self.topics.labels,
            **kw,
            group_id=s.kafka.consumer_group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.stream.max_batch,
        )
        self.producer = AIOKafkaProducer(**kw, linger_ms=5, enable_idempotence=s.kafka.enable_idempotence, acks="all")
        await self.producer.start()
        await self.consumer.start()
        try:
            while not self._stop.is_set():
                batch = await self.consumer.getmany(timeout_ms=max(1, s.stream.max_batch_wait_ms * 5),
                                                    max_records=s.stream.max_batch)
                if not batch:
                    continue
                offsets: dict[TopicPartition, int] = {}
                futures = []
                for tp, records in batch.items():
                    metrics.EVENTS.labels(tp.topic).inc(len(records))
                    if tp.topic == self.topics.orders:
                        futures.extend(await self._orders(records))
                    else:
                        futures.extend(await self._labels(records))
                    offsets[tp] = records[-1].offset + 1
                if futures:
                    await asyncio.gather(*futures)  # effects durable before the commit
                assigned = self.consumer.assignment()
                await self.consumer.commit({tp: o for tp, o in offsets.items() if tp in assigned})
                self.stats.batches += 1
        finally:
            await self.consumer.stop()
            await self.producer.stop()
