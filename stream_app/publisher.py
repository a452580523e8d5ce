"""A bounded, non-blocking publisher: the gRPC path hands decisions over and never waits.

``offer()`` puts a record in a bounded queue and returns at once; when the queue is full the
record is counted as dropped (``fraudscore_publish_dropped_total``) rather than slowing the
answer to the customer. A background task sends queued records to Kafka in batches; a batch whose
send fails is logged and counted (``fraudscore_publish_failed_total``).

:meth:`DecisionPublisher.connecting` also owns the producer and connects it in the background,
retrying with backoff: the decisions log is not on the answer's path, so a scoring server starts
and answers while Kafka is unreachable (decisions are buffered, then dropped and counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from contracts.events import Decision, encode

log = logging.getLogger(__name__)

DROPPED = Counter("fraudscore_publish_dropped_total", "Records dropped because the publish buffer was full", ["topic"])
FAILED = Counter("fraudscore_publish_failed_total", "Records whose send to Kafka failed (logged)", ["topic"])


class DecisionPublisher:
    def __init__(self, producer: AIOKafkaProducer, topic: str, maxsize: int = 10_000) -> None:
        self.producer = producer
        self.topic = topic
        self.queue: asyncio.Queue[Decision] = asyncio.Queue(maxsize)
        self.task: asyncio.Task[None] | None = None
        self.sent = 0
        self._factory: Callable[[], AIOKafkaProducer] | None = None  # set: we start and stop the producer
        self.connected = True
        self._retry_max_s = 30.0

    @classmethod
    def connecting(cls, factory: Callable[[], AIOKafkaProducer], topic: str, maxsize: int = 10_000,
                   retry_max_s: float = 30.0) -> DecisionPublisher:
        """A publisher that creates, connects (retrying) and finally stops its own producer."""
        pub = cls(factory(), topic, maxsize)
        pub._factory = factory
        pub.connected = False
        pub._retry_max_s = retry_max_s
        return pub

    async def _connect(self) -> None:
        assert self._factory is not None
        delay, attempt = 0.5, 0
        while True:
            try:
                await self.producer.start()
            except Exception as exc:  # noqa: BLE001 - any failure to connect: answers go on, retry
                attempt += 1
                with contextlib.suppress(Exception):
                    await self.producer.stop()
                self.producer = self._factory()
                if attempt == 1 or attempt % 10 == 0:
                    log.warning("cannot reach Kafka to publish %s (%s: %s); answering goes on, decisions are "
                                "buffered (%d max) and dropped when full; retrying", self.topic,
                                type(exc).__name__, exc, self.queue.maxsize)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)
                continue
            self.connected = True
            if attempt:
                log.info("connected to Kafka: publishing %s", self.topic)
            return

    def offer(self, decision: Decision) -> None:
        try:
            self.queue.put_nowait(decision)
        except asyncio.QueueFull:
            DROPPED.labels(self.topic).inc()

    def start(self) -> DecisionPublisher:
        self.task = asyncio.create_task(self._run(), name=f"publish-{self.topic}")
        return self

    async def _run(self) -> None:
        if not self.connected:
            await self._connect()
        while True:
            first = await self.queue.get()
            batch = [first]
            while not self.queue.empty() and len(batch) < 500:
                batch.append(self.queue.get_nowait())
            try:
                futures = [await self.producer.send(self.topic, encode(d), key=d.order_id.encode()) for d in batch]
                await asyncio.gather(*futures)
                self.sent += len(batch)
            except Exception:  # the answer was already given; log and keep the loop alive
                FAILED.labels(self.topic).inc(len(batch))
                log.exception("failed to publish %d decisions to %s", len(batch), self.topic)
            finally:
                for _ in batch:  # stop() waits for this: queued *and* in-flight records are handled
                    self.queue.task_done()

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Send what is queued and the batch being sent (bounded wait), then stop.

        Waiting only for an empty queue is not enough: the sender takes up to 500 records off the queue
        at once, and cancelling it mid-batch lost the rest of that batch.
        """
        if self.task is not None and not self.task.done() and self.connected:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain_timeout_s):
                    await self.queue.join()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self._factory is not None:
            with contextlib.suppress(Exception):
                await self.producer.stop()
