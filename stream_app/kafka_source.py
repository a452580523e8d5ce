"""One Kafka consumer-group member running micro-batches: poll → process → publish → commit.

Commit semantics (at-least-once delivery, effects once):

* ``enable_auto_commit=False``; a batch's offsets are committed only after its outputs are
  acknowledged (``acks=all``) and its feature updates returned — never before.
* Only partitions still assigned are committed. The rebalance listener's ``on_partitions_revoked``
  waits for the in-flight batch (aiokafka awaits the listener before re-joining), so a partition
  leaves this member with its last batch committed: a graceful rebalance replays nothing.
* A batch that cannot complete (feature store down, broker refusing writes) is retried with
  backoff for at most ``stream.batch_retry_budget_s`` — well inside ``max_poll_interval_ms`` and the
  rebalance timeout — then its partitions are rewound to the batch's first offsets and polled
  again. That is the backpressure: no commit, no progress, lag grows and ``/healthz`` says why.
* A crash (kill -9) replays the uncommitted batch on the partition's next owner: feature updates
  are idempotent per order id; the decision ledger marks the re-sent decisions whose publish was
  confirmed, and lets the ones whose publish never was go out unmarked (``stream_app.ledger``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaConnectionError, KafkaError

from contracts.config import Settings
from feature_state.exceptions import FeatureStoreUnavailable
from monitoring import metrics
from stream_app import metrics as smetrics
from stream_app.exceptions import BatchAbandoned, BrokerUnavailable, SinkError
from stream_app.kafka import bootstrap, client_kwargs
from stream_app.processor import BatchResult
from stream_app.records import SourceRecord
from stream_app.sinks import RecordSink

log = logging.getLogger(__name__)

RETRYABLE = (FeatureStoreUnavailable, SinkError)


class BatchProcessor(Protocol):
    async def process(self, records: Sequence[SourceRecord]) -> BatchResult: ...

    def committed(self) -> None: ...


@dataclass
class ConsumerStats:
    """Counters a worker exposes on ``/stats`` and in the summary line."""

    events: int = 0
    orders: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0
    abandoned: int = 0
    commit_failures: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    assigned: list[str] = field(default_factory=list)
    last_error: str | None = None
    last_batch_at: float | None = None

    def add(self, result: BatchResult, n_records: int) -> None:
        self.events += n_records
        self.orders += result.orders
        self.duplicates += result.duplicates
        self.dead_letters += result.dead_letters
        self.batches += 1
        for k, v in result.decisions.items():
            self.decisions[k] = self.decisions.get(k, 0) + v
        self.last_batch_at = time.time()


class AdaptiveChunk:
    """How many records go to the pipeline at once.

    A store that times out on a large batch (e.g. Redis with thousands of entities per round trip)
    would time out again on the same batch forever. On a feature-store failure the chunk halves
    (down to ``floor``); after each successful batch it grows back by a quarter.
    """

    def __init__(self, ceiling: int, floor: int = 25) -> None:
        self.ceiling = max(1, ceiling)
        self.floor = min(floor, self.ceiling)
        self.size = self.ceiling

    def shrink(self) -> None:
        self.size = max(self.floor, self.size // 2)

    def grow(self) -> None:
        self.size = min(self.ceiling, max(self.size + 1, int(self.size * 1.25)))


def merge(into: BatchResult, part: BatchResult) -> None:
    for topic, recs in part.outputs.by_topic.items():
        into.outputs.extend(topic, recs)
    into.orders += part.orders
    into.duplicates += part.duplicates
    into.dead_letters += part.dead_letters
    into.skipped += part.skipped
    for k, v in part.decisions.items():
        into.decisions[k] = into.decisions.get(k, 0) + v
    for p, ts in part.event_time.items():
        if ts > into.event_time.get(p, -1.0):
            into.event_time[p] = ts


async def process_chunked(records: Sequence[SourceRecord], processor: BatchProcessor, chunk: int) -> BatchResult:
    """Run the processor over ``records`` in chunks of ``chunk``; one result with every output."""
    begin = getattr(processor, "begin_attempt", None)
    if begin is not None:
        begin()
    if len(records) <= chunk:
        return await processor.process(records)
    total = BatchResult()
    for i in range(0, len(records), chunk):
        merge(total, await processor.process(records[i:i + chunk]))
    return total


async def retry_batch(
    records: Sequence[SourceRecord],
    processor: BatchProcessor,
    sink: RecordSink,
    *,
    budget_s: float,
    stats: ConsumerStats,
    stopping: asyncio.Event | None = None,
    chunk: AdaptiveChunk | None = None,
    slow_s: float | None = None,
) -> BatchResult:
    """Process and publish one batch, retrying transient failures with jittered backoff.

    A feature-store failure also halves the chunk given to the pipeline, and so does a batch that
    succeeded but took longer than ``slow_s`` (a slow downstream: the chunk also bounds the next poll,
    so the time between polls stays well inside the consumer's poll interval). Raises
    :class:`BatchAbandoned` when the budget runs out (or a stop is requested mid-retry).
    """
    chunk = chunk or AdaptiveChunk(len(records) or 1)
    deadline = time.monotonic() + budget_s
    delay = 0.05
    while True:
        try:
            t0 = time.monotonic()
            result = await process_chunked(records, processor, chunk.size)
            await sink.publish(result.outputs)
            confirm = getattr(processor, "published", None)
            if confirm is not None:
                await confirm()  # the outputs are acknowledged: their ledger claims become final
            if slow_s is not None and time.monotonic() - t0 > slow_s and len(records) > chunk.floor:
                chunk.shrink()
                smetrics.SLOW_BATCHES.inc()
                log.warning("a batch of %d records took %.1fs (> %.1fs, a quarter of the poll interval): "
                            "next batches of at most %d", len(records), time.monotonic() - t0, slow_s, chunk.size)
            else:
                chunk.grow()
            return result
        except RETRYABLE as exc:
            store = isinstance(exc, FeatureStoreUnavailable)
            reason = "feature_store" if store else "publish"
            if store:
                chunk.shrink()
            smetrics.RETRIES.labels(reason).inc()
            stats.retries += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stopping is not None and stopping.is_set()):
                raise BatchAbandoned(f"batch of {len(records)} records abandoned after retries: {exc}") from exc
            log.warning("batch failed (%s), retrying in %.2fs with chunks of %d: %s", reason, delay, chunk.size, exc)
            await asyncio.sleep(min(delay, remaining) * (0.5 + random.random() / 2))  # noqa: S311 - jitter
            delay = min(delay * 2, 2.0)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaBatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # aiokafka awaits this before re-joining: let the in-flight batch finish and commit.
        async with self.owner.lock:
            pass
        smetrics.REBALANCES.labels("revoked").inc(len(revoked))
        for tp in revoked:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(0)
            self.owner.paused.discard(tp)
            self.owner.event_time.pop(tp, None)
            self.owner.next_offset.pop(tp, None)
        log.info("%s: partitions revoked: %s", self.owner.name, sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        smetrics.REBALANCES.labels("assigned").inc(len(assigned))
        self.owner.paused.difference_update(assigned)  # a new assignment starts unpaused
        self.owner.stats.assigned = sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned)
        log.info("%s: partitions assigned: %s", self.owner.name, sorted(tp.partition for tp in assigned))


class KafkaBatchConsumer:
    """A consumer of one topic in one group, feeding micro-batches to a processor."""

    def __init__(
        self,
        settings: Settings,
        *,
        topic: str,
        group_id: str,
        processor: BatchProcessor,
        sink: RecordSink,
        name: str = "orders",
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.group_id = group_id
        self.processor = processor
        self.sink = sink
        self.name = name
        self.stats = ConsumerStats()
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.consumer: AIOKafkaConsumer | None = None
        self.chunk = AdaptiveChunk(settings.stream.max_batch)
        # Event-time alignment: a partition more than this far ahead of the slowest lagging one is
        # paused, so catching up on a backlog does not turn cross-partition entities' events late.
        self.max_skew_s = settings.feature_store.allowed_lateness_s / 2
        self.event_time: dict[TopicPartition, float] = {}
        self.next_offset: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def stop(self) -> None:
        """Finish the current batch, commit it, leave the group."""
        self.stopping.set()

    async def start(self) -> None:
        s = self.settings.stream
        self.consumer = AIOKafkaConsumer(
            **client_kwargs(self.settings.kafka),
            group_id=self.group_id,
            client_id=f"fraudscore-{self.name}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=s.max_batch,
            fetch_max_wait_ms=s.fetch_max_wait_ms,
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            max_poll_interval_ms=s.max_poll_interval_ms,
            rebalance_timeout_ms=s.max_poll_interval_ms,
        )
        self.consumer.subscribe([self.topic], listener=_Listener(self))
        try:
            await self.consumer.start()
        except KafkaConnectionError as exc:
            raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(self.settings.kafka)}: {exc}") from exc

    async def close(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()  # leaves the group: the others rebalance at once

    async def run(self) -> None:
        """Consume until :meth:`stop`; returns after the last batch is committed."""
        if self.consumer is None:
            await self.start()
        assert self.consumer is not None
        consumer = self.consumer
        s = self.settings.stream
        wait_ms = max(1, s.max_batch_wait_ms)
        try:
            while not self.stopping.is_set():
                try:
                    # the adaptive chunk bounds the poll too: after slow batches, fewer records per poll
                    data = await consumer.getmany(timeout_ms=wait_ms, max_records=self.chunk.size)
                except KafkaError as exc:
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("%s: poll failed: %s", self.name, exc)
                    await asyncio.sleep(0.5)
                    continue
                if not data:
                    continue
                async with self.lock:
                    await self._batch(consumer, data)
        finally:
            await self.close()

    async def _batch(self, consumer: AIOKafkaConsumer, data: dict[TopicPartition, list]) -> None:  # type: ignore[type-arg]
        records: list[SourceRecord] = []
        first: dict[TopicPartition, int] = {}
        nxt: dict[TopicPartition, int] = {}
        append = records.append
        for tp, msgs in data.items():
            if not msgs:
                continue
            first[tp] = msgs[0].offset
            nxt[tp] = msgs[-1].offset + 1
            topic, part = tp.topic, tp.partition
            for m in msgs:
                append(SourceRecord(topic, part, m.offset, m.key, m.value or b"", m.timestamp))
        metrics.EVENTS.labels(self.topic).inc(len(records))
        try:
            result = await retry_batch(records, self.processor, self.sink,
                                       budget_s=self.settings.stream.batch_retry_budget_s,
                                       stats=self.stats, stopping=self.stopping, chunk=self.chunk,
                                       slow_s=self.settings.stream.max_poll_interval_ms / 4000.0)
        except BatchAbandoned as exc:
            self.stats.abandoned += 1
            smetrics.RETRIES.labels("abandoned").inc()
            log.error("%s: %s; rewinding %d partitions", self.name, exc, len(first))
            assigned = consumer.assignment()
            for tp, off in first.items():
                if tp in assigned:
                    consumer.seek(tp, off)
            return
        t0 = time.perf_counter()
        assigned = consumer.assignment()
        offsets = {tp: off for tp, off in nxt.items() if tp in assigned}
        if offsets:
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, KafkaError) as exc:
                # The group moved on (we were too slow or fenced): the next owner replays this batch;
                # its effects are idempotent and its decisions are marked as redeliveries.
                self.stats.commit_failures += 1
                log.warning("%s: commit failed, the batch will be replayed elsewhere: %s", self.name, exc)
        self.processor.committed()
        smetrics.BATCH_SECONDS.labels("commit").observe(time.perf_counter() - t0)
        self.stats.add(result, len(records))
        for tp in offsets:
            hw = consumer.highwater(tp)
            if hw is not None:
                metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, hw - offsets[tp]))
        self.next_offset.update(offsets)
        for tp in nxt:
            ts = result.event_time.get(tp.partition)
            if ts is not None:
                self.event_time[tp] = ts
        self._align(consumer, assigned)

    def _align(self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Pause partitions whose event time ran ahead of the slowest partition that still has a backlog.

        Live traffic keeps partitions within seconds of each other and nothing is paused. When a
        backlog is consumed (after an outage, a replay) one partition can race hours ahead; entities
        shared across partitions (card, device, merchant) would then see the other partitions'
        orders as late. The slowest lagging partition is never paused, so progress is guaranteed.
        """
        behind: dict[TopicPartition, float] = {}
        for tp in assigned:
            hw = consumer.highwater(tp)
            pos = self.next_offset.get(tp)
            ts = self.event_time.get(tp)
            if hw is not None and pos is not None and ts is not None and hw > pos:
                behind[tp] = ts
        floor = min(behind.values(), default=None)
        for tp in list(self.paused):
            if tp not in assigned or floor is None or self.event_time.get(tp, floor) <= floor + self.max_skew_s:
                self.paused.discard(tp)
                if tp in assigned:
                    consumer.resume(tp)
        if floor is None:
            return
        for tp, ts in behind.items():
            if ts > floor + self.max_skew_s and tp not in self.paused:
                self.paused.add(tp)
                consumer.pause(tp)
                log.info("%s: pausing %s[%d]: %.0fs ahead of the slowest partition", self.name, tp.topic,
                         tp.partition, ts - floor)
