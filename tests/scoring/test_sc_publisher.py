"""The decision publisher (`stream_app.publisher.DecisionPublisher`) that `serve` hands every answer to:
bounded, never blocks the answer, drops and counts when full; against the real embedded broker."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from prometheus_client import REGISTRY

from contracts.events import Decision
from scoring.proto.fraudscore.v1 import scoring_pb2 as pb
from scoring.proto.fraudscore.v1 import scoring_pb2_grpc as pb_grpc
from stream_app.publisher import DecisionPublisher
from tests.scoring.conftest import order_msg
from tests.services import KafkaBroker

WARM = b"warm-up"


def dropped(topic: str) -> float:
    return REGISTRY.get_sample_value("fraudscore_publish_dropped_total", {"topic": topic}) or 0.0


def decision(i: int) -> Decision:
    now = dt.datetime.now(dt.UTC)
    return Decision(order_id=f"d{i}", decision="review" if i % 3 == 0 else "allow", score=i / 10_000,
                    model_version="m1", ruleset_version="r1", source="grpc", decided_at=now, event_time=now,
                    customer_id=f"c{i % 7}", amount=float(i))


async def started_producer(bootstrap: str, topic: str) -> AIOKafkaProducer:
    """A started producer that already knows the topic (created by a first record, which readers skip)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    await producer.send_and_wait(topic, WARM, key=WARM)
    return producer


async def read_all(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record on the topic up to its current end (so an absence is an absence), warm-up excluded."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        assert topic in await consumer.topics()
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        assert parts, f"topic {topic} has no partitions"
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        deadline = time.monotonic() + 30
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for records in (await consumer.getmany(*parts, timeout_ms=500)).values():
                out.extend(json.loads(r.value) for r in records if r.key != WARM)
    finally:
        await consumer.stop()
    return out


@pytest.fixture
async def own_broker() -> AsyncIterator[KafkaBroker]:
    """A broker of this test's own (it gets frozen with SIGSTOP); always resumed and stopped after."""
    broker = KafkaBroker().start()
    yield broker
    if broker.broker.proc is not None and broker.broker.proc.poll() is None:
        os.kill(broker.broker.proc.pid, signal.SIGCONT)
    broker.stop()


async def test_offered_decisions_arrive_on_the_topic_and_stop_flushes_them_all(kafka_broker: Any,
                                                                               unique: str) -> None:
    topic = f"decisions-{unique}"
    producer = await started_producer(kafka_broker.bootstrap, topic)
    try:
        publisher = DecisionPublisher(producer, topic, maxsize=5000).start()
        before = dropped(topic)
        # more than one send batch (500): stop() must also wait for the batch being sent
        for i in range(1200):
            publisher.offer(decision(i))
        await publisher.stop()
        assert publisher.sent == 1200
        assert dropped(topic) == before
    finally:
        await producer.stop()
    got = await read_all(kafka_broker.bootstrap, topic)
    assert sorted(r["order_id"] for r in got) == sorted(f"d{i}" for i in range(1200))  # each once
    by_id = {r["order_id"]: r for r in got}
    assert by_id["d3"]["decision"] == "review" and by_id["d3"]["amount"] == 3.0
    assert by_id["d3"]["model_version"] == "m1" and by_id["d3"]["ruleset_version"] == "r1"


async def test_kafka_hung_answers_still_come_full_buffer_drops_and_counts(
    grpc_server: Any, channel_for: Any, own_broker: KafkaBroker, unique: str
) -> None:
    topic = f"decisions-{unique}"
    maxsize = 3
    proc = own_broker.broker.proc
    assert proc is not None
    producer = await started_producer(own_broker.bootstrap, topic)
    publisher = DecisionPublisher(producer, topic, maxsize=maxsize).start()
    try:
        srv = await grpc_server(sink=publisher.offer)
        stub = pb_grpc.FraudScoringStub(channel_for(srv.target))
        before = dropped(topic)
        os.kill(proc.pid, signal.SIGSTOP)  # Kafka hangs: connections stay open, nothing answers

        # every answer comes back inside its deadline, whatever Kafka does
        first = await stub.Score(pb.ScoreRequest(order=order_msg(order_id="h0")), timeout=2)
        assert first.order_id == "h0"
        # the sender has taken h0 and waits for the hung broker; the buffer is empty again
        deadline = time.monotonic() + 10
        while not publisher.queue.empty():
            assert time.monotonic() < deadline, "the sender never took the first decision"
            await asyncio.sleep(0.01)
        for i in range(1, 10):
            r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"h{i}")), timeout=2)
            assert r.order_id == f"h{i}"
        # h1..h3 fill the buffer; h4..h9 find it full: dropped and counted, the answers unaffected
        assert publisher.queue.qsize() == maxsize
        assert dropped(topic) - before == 6
        assert publisher.sent == 0

        # Kafka back: what was buffered (and the batch in flight) is delivered; the dropped ones are not
        os.kill(proc.pid, signal.SIGCONT)
        await publisher.stop(drain_timeout_s=30)
        assert publisher.sent == 4
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # never leave the producer waiting on a frozen broker
        await publisher.stop(drain_timeout_s=0)
        await producer.stop()
    got = await read_all(own_broker.bootstrap, topic)
    assert sorted(r["order_id"] for r in got) == ["h0", "h1", "h2", "h3"]
    assert dropped(topic) - before == 6


async def test_serve_starts_and_answers_while_kafka_is_unreachable_then_publishes_when_it_comes(
    registry: Any, tmp_path: Any
) -> None:
    """The decisions log is not on the answer's path: `serve` (publishing) with Kafka down starts, answers,
    buffers; when a broker appears on that address the buffered decisions are published."""
    from tests.scoring.serve_proc import ServeProcess, poll_until, sample

    models, _ = registry
    topic = f"dec-down-{time.monotonic_ns()}"
    broker = KafkaBroker()  # its port, nothing listening yet
    srv = ServeProcess(models, tmp_path, publish=True, env={
        "KAFKA_BOOTSTRAP": broker.bootstrap, "FRAUDSCORE__KAFKA__TOPICS__DECISIONS": topic,
        "FRAUDSCORE__SCORING__PUBLISH_BUFFER": "4"})
    try:
        await srv.wait_serving()
        import grpc

        async with grpc.aio.insecure_channel(srv.target) as ch:
            stub = pb_grpc.FraudScoringStub(ch)
            for i in range(6):
                r = await stub.Score(pb.ScoreRequest(order=order_msg(order_id=f"down{i}")), timeout=5)
                assert r.order_id == f"down{i}" and r.model_version
        metrics = await srv.metrics()
        assert sample(metrics, "fraudscore_publish_dropped_total", topic=topic) == 2.0  # buffer of 4, 6 answers
        assert "cannot reach Kafka" in srv.log()

        broker.start()
        await (await started_producer(broker.bootstrap, topic)).stop()  # the topic exists
        got = await poll_until(lambda: read_all(broker.bootstrap, topic), lambda recs: len(recs) >= 4,
                               "the buffered decisions published once Kafka is reachable", wait_s=90)
        assert sorted(r["order_id"] for r in got) == [f"down{i}" for i in range(4)]
        assert await srv.stop() == 0, srv.log()
    finally:
        srv.close()
        broker.stop()
