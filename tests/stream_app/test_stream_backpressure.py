"""A slow downstream bounds the work per poll: batches slower than a quarter of the poll interval halve
the records taken per poll, so the consumer keeps polling well inside `max_poll_interval_ms` (never
evicted from the group), and every record is still processed once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from prometheus_client import REGISTRY
from streamkit import produce

from stream_app.kafka import ensure_topics
from stream_app.kafka_source import KafkaBatchConsumer
from stream_app.processor import BatchResult
from stream_app.records import Outputs, SourceRecord
from stream_app.sinks import RecordSink


class SlowDownstream:
    """Our BatchProcessor interface: 3 ms of (awaited) downstream work per record, no outputs."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.seen: list[tuple[int, int]] = []

    async def process(self, records: Sequence[SourceRecord]) -> BatchResult:
        self.batches.append(len(records))
        self.seen.extend((int(r.partition), int(r.position)) for r in records)
        await asyncio.sleep(0.003 * len(records))
        return BatchResult()

    def committed(self) -> None:
        return None


class NoSink(RecordSink):
    async def publish(self, outputs: Outputs) -> None:
        return None


def _slow_total() -> float:
    return REGISTRY.get_sample_value("fraudscore_stream_slow_batches_total") or 0.0


async def test_slow_batches_shrink_the_poll_and_lose_nothing(stream_settings: Any) -> None:
    # poll interval 1 s → a batch slower than 0.25 s halves the chunk; 200 records take 0.6 s
    settings = stream_settings(**{"stream.max_poll_interval_ms": 1000, "stream.max_batch": 200})
    await ensure_topics(settings.kafka)
    t = settings.kafka.topics
    n = 1500
    await produce(settings.kafka.bootstrap or "", t.orders, [(f"k{i}".encode(), b"{}") for i in range(n)])
    slow_before = _slow_total()
    proc = SlowDownstream()
    consumer = KafkaBatchConsumer(settings, topic=t.orders, group_id=f"{settings.kafka.consumer_group}-bp",
                                  processor=proc, sink=NoSink(), name="orders")
    task = asyncio.create_task(consumer.run())
    try:
        for _ in range(1200):
            if task.done():
                task.result()
            if consumer.stats.events >= n:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"stuck: {consumer.stats}")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)

    assert len(proc.seen) == len(set(proc.seen)) == n, "every record once"
    assert consumer.stats.commit_failures == 0 and consumer.stats.abandoned == 0
    assert _slow_total() > slow_before
    # a batch of more than 83 records takes > 0.25 s: from the first such batch on, polls take about half
    first_slow = next(i for i, b in enumerate(proc.batches) if b * 0.003 > 0.25)
    after = sorted(proc.batches[first_slow + 1:])
    assert after and after[len(after) // 2] <= 100, proc.batches
    assert consumer.chunk.size < 200
