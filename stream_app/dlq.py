"""Reading the dead-letter topic and replaying chosen dead letters to their original topics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from contracts.config import KafkaSettings
from stream_app.deadletter import DeadLetter, decode_dead_letter
from stream_app.exceptions import BrokerUnavailable
from stream_app.kafka import bootstrap, client_kwargs

REPLAY_HEADER = "fraudscore-replayed-from"


async def read_dead_letters(k: KafkaSettings, *, timeout_s: float = 10.0) -> tuple[list[DeadLetter], int]:
    """Every envelope on the dead-letter topic (up to its current end) and the count of foreign records."""
    consumer = AIOKafkaConsumer(**client_kwargs(k), enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(k)}: {exc}") from exc
    letters: list[DeadLetter] = []
    foreign = 0
    try:
        topic = k.topics.dead_letters
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return [], 0
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and await _any_behind(consumer, ends):
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for msgs in batch.values():
                for m in msgs:
                    try:
                        letters.append(decode_dead_letter(m.value or b""))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        foreign += 1
    finally:
        await consumer.stop()
    letters.sort(key=lambda dl: dl.failed_at)
    return letters, foreign


async def _any_behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return True
    return False


async def replay(k: KafkaSettings, letters: Sequence[DeadLetter]) -> int:
    """Publish each (unmasked) dead letter's original bytes to its original topic and key."""
    producer = AIOKafkaProducer(**client_kwargs(k), acks="all")
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {bootstrap(k)}: {exc}") from exc
    try:
        futures = []
        for dl in letters:
            if dl.masked:
                continue
            origin = f"{dl.topic}[{dl.partition}]@{dl.offset}".encode()
            futures.append(await producer.send(dl.topic, dl.original_bytes(), key=dl.key.encode() if dl.key else None,
                                               headers=[(REPLAY_HEADER, origin)]))
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()
