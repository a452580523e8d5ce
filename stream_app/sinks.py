"""Publishing a batch's outputs durably: Kafka (batched per partition) and Kinesis (``PutRecords``).

``publish(outputs)`` returns only when every record is acknowledged (Kafka ``acks=all``; Kinesis:
no failed record left), so the caller may commit the input offsets afterwards. A failure raises
:class:`~stream_app.exceptions.SinkError`; the caller retries the whole batch (records are keyed
by ``order_id``, so a re-publish is a redelivery of the same key, never a new effect).

Repeats (records with the header ``fraudscore-duplicate: 1``) keep that header on Kafka. Kinesis
records have no headers, so :class:`KinesisSink` writes the mark into the record itself: a repeated
decision or action is the same JSON object plus ``"duplicate": true`` (the first, unmarked record has
no such field). Event decoders ignore unknown fields, so the record still decodes as the contract's
``Decision`` / ``Action``; the partition key stays the ``order_id`` (same shard, same dedup key).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Any

import msgspec
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from stream_app import metrics as smetrics
from stream_app.exceptions import SinkError
from stream_app.records import DUPLICATE_HEADER, Outputs, OutRecord

#: JSON field marking a repeated decision / action on Kinesis (the Kafka header's counterpart)
DUPLICATE_FIELD = "duplicate"
_MARK = (DUPLICATE_HEADER, b"1")


class RecordSink(ABC):
    """Somewhere a batch's outputs go."""

    @abstractmethod
    async def publish(self, outputs: Outputs) -> None:
        """Publish every record and wait until all are durable; raise ``SinkError`` otherwise."""

    async def close(self) -> None:  # noqa: B027 - optional
        """Flush and release the client."""


def kafka_partition(key: bytes, n_partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) picks for ``key``."""
    return int((murmur2(key) & 0x7FFFFFFF) % n_partitions)


class KafkaSink(RecordSink):
    """Builds one record batch per (topic, partition) and sends them together.

    Skips aiokafka's per-message ``send()`` path (a future and an accumulator lookup per record):
    records are partitioned like the Java client would, appended to ``create_batch()`` builders and
    submitted with ``send_batch()``.
    """

    def __init__(self, producer: AIOKafkaProducer, *, owns_producer: bool = True) -> None:
        self.producer = producer
        self.owns_producer = owns_producer
        self._partitions: dict[str, int] = {}

    async def _n_partitions(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            parts = await self.producer.partitions_for(topic)
            if not parts:
                raise SinkError(f"topic {topic!r} has no partitions (does it exist? `fraudscore topics create`)")
            n = self._partitions[topic] = len(parts)
        return n

    async def publish(self, outputs: Outputs) -> None:
        t0 = time.perf_counter()
        producer = self.producer
        futures: list[asyncio.Future[Any]] = []
        try:
            for topic, records in outputs.by_topic.items():
                if not records:
                    continue
                n = await self._n_partitions(topic)
                by_partition: dict[int, list[OutRecord]] = {}
                for r in records:
                    p = (murmur2(r.key) & 0x7FFFFFFF) % n
                    bucket = by_partition.get(p)
                    if bucket is None:
                        by_partition[p] = [r]
                    else:
                        bucket.append(r)
                for p, recs in by_partition.items():
                    batch = producer.create_batch()
                    for r in recs:
                        if batch.append(key=r.key, value=r.value, timestamp=None, headers=list(r.headers)) is None:
                            futures.append(await producer.send_batch(batch, topic, partition=p))
                            batch = producer.create_batch()
                            if batch.append(key=r.key, value=r.value, timestamp=None, headers=list(r.headers)) is None:
                                raise SinkError(f"a record for {topic} is larger than the producer's max_batch_size")
                    futures.append(await producer.send_batch(batch, topic, partition=p))
            if futures:
                await asyncio.gather(*futures)
        except KafkaError as exc:
            for f in futures:
                f.cancel()
            raise SinkError(f"publishing to Kafka failed: {type(exc).__name__}: {exc}") from exc
        smetrics.BATCH_SECONDS.labels("publish").observe(time.perf_counter() - t0)

    async def close(self) -> None:
        if self.owns_producer:
            await self.producer.stop()


def mark_duplicate(value: bytes) -> bytes:
    """``value`` (a JSON object) with ``"duplicate": true`` set: how a repeat is marked on Kinesis."""
    doc = msgspec.json.decode(value)
    if not isinstance(doc, dict):
        raise SinkError("only a JSON object can carry the duplicate mark")
    doc[DUPLICATE_FIELD] = True
    return msgspec.json.encode(doc)


def is_marked_duplicate(data: bytes) -> bool:
    """Whether a decision / action read from a Kinesis stream is a marked repeat."""
    doc = msgspec.json.decode(data)
    return isinstance(doc, dict) and doc.get(DUPLICATE_FIELD) is True


class KinesisSink(RecordSink):
    """``PutRecords`` in chunks of 500 records / 5 MB; failed records are retried with backoff.

    Kinesis records have no headers: a repeat (header ``fraudscore-duplicate: 1``) is published as
    its JSON plus ``"duplicate": true`` (:func:`mark_duplicate`); the partition key is the record key
    (``order_id``) either way. Other headers are dropped (a dead letter's stage is in its envelope).
    """

    MAX_RECORDS = 500
    MAX_BYTES = 5 * 1024 * 1024

    def __init__(self, client: Any, *, attempts: int = 8, base_backoff_s: float = 0.05) -> None:
        self.client = client
        self.attempts = attempts
        self.base_backoff_s = base_backoff_s

    def _chunks(self, records: list[OutRecord]) -> list[list[dict[str, Any]]]:
        chunks: list[list[dict[str, Any]]] = [[]]
        size = 0
        for r in records:
            data = mark_duplicate(r.value) if _MARK in r.headers else r.value
            entry = {"Data": data, "PartitionKey": r.key.decode("utf-8", "replace")[:256]}
            n = len(data) + len(entry["PartitionKey"])
            if len(chunks[-1]) >= self.MAX_RECORDS or size + n > self.MAX_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(entry)
            size += n
        return [c for c in chunks if c]

    def _put(self, stream: str, entries: list[dict[str, Any]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        pending = entries
        for attempt in range(self.attempts):
            try:
                resp = self.client.put_records(StreamName=stream, Records=pending)
            except (BotoCoreError, ClientError) as exc:
                if attempt == self.attempts - 1:
                    raise SinkError(f"Kinesis PutRecords to {stream} failed: {exc}") from exc
                time.sleep(min(2.0, self.base_backoff_s * 2**attempt))
                continue
            if not resp.get("FailedRecordCount"):
                return
            pending = [e for e, r in zip(pending, resp["Records"], strict=True) if "ErrorCode" in r]
            time.sleep(min(2.0, self.base_backoff_s * 2**attempt))
        raise SinkError(f"Kinesis PutRecords to {stream}: {len(pending)} records still failing after "
                        f"{self.attempts} attempts")

    def _put_all(self, stream: str, chunks: list[list[dict[str, Any]]]) -> None:
        for chunk in chunks:
            self._put(stream, chunk)

    async def publish(self, outputs: Outputs) -> None:
        t0 = time.perf_counter()
        # Streams in parallel, each stream's chunks in order (keeps per-key order across chunks).
        jobs = [asyncio.to_thread(self._put_all, stream, self._chunks(records))
                for stream, records in outputs.by_topic.items() if records]
        if jobs:
            await asyncio.gather(*jobs)
        smetrics.BATCH_SECONDS.labels("publish").observe(time.perf_counter() - t0)
