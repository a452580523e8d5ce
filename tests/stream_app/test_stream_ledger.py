"""The decision ledger's two phases (claim pending at a record position, confirm after the publish),
on every backend: in-process, Redis and a Redis Cluster (real servers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from stream_app.ledger import DecisionLedger, MemoryLedger, RedisLedger


@pytest.fixture(params=["memory", "redis", "redis_cluster"])
async def ledger(request: pytest.FixtureRequest, unique: str) -> AsyncIterator[DecisionLedger]:
    led: DecisionLedger
    if request.param == "memory":
        led = MemoryLedger()
    elif request.param == "redis":
        led = RedisLedger(request.getfixturevalue("redis_url"), prefix=f"t:{unique}:")
    else:
        cluster: Any = request.getfixturevalue("redis_cluster")
        led = RedisLedger(cluster.url, cluster=True, prefix=f"t:{unique}:")
    yield led
    await led.close()


async def test_a_record_that_claimed_and_died_before_its_publish_was_confirmed_publishes_again(
    ledger: DecisionLedger,
) -> None:
    # first claims: ours
    assert await ledger.claim(["a", "b", "c"], ["o:0:10", "o:0:11", "o:1:5"]) == [True, True, True]
    # the same records again (a retry, or a replay after a crash before the confirmation): still ours
    assert await ledger.claim(["a", "b"], ["o:0:10", "o:0:11"]) == [True, True]
    # another record with the same order id (a duplicate event): a repeat
    assert await ledger.claim(["a", "c"], ["o:0:99", "o:1:6"]) == [False, False]
    # once confirmed, even the same record replayed (a commit lost to a rebalance) is a repeat
    await ledger.confirm(["a", "b"])
    assert await ledger.claim(["a", "b", "c"], ["o:0:10", "o:0:11", "o:1:5"]) == [False, False, True]
    # confirming an id nobody claimed creates nothing
    await ledger.confirm(["never-claimed"])
    assert await ledger.claim(["never-claimed"], ["o:2:1"]) == [True]


async def test_claims_without_positions_are_first_come_only(ledger: DecisionLedger) -> None:
    assert await ledger.claim(["x", "y"]) == [True, True]
    assert await ledger.claim(["x", "z"]) == [False, True]
    assert await ledger.claim([]) == []
    await ledger.confirm([])


class _Sink:
    """Our own RecordSink interface: keeps what is published, or fails every publish."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.published: list[Any] = []

    async def publish(self, outputs: Any) -> None:
        from stream_app.exceptions import SinkError

        if self.fail:
            raise SinkError("broker unreachable")
        self.published.append(outputs)

    async def close(self) -> None:
        return None


async def test_a_batch_whose_publish_never_succeeded_is_republished_unmarked_and_a_confirmed_one_marked(
    stream_settings: Any, redis_url: str, unique: str,
) -> None:
    """The processor and the shared Redis ledger: a worker that claimed a batch and died before its
    publish was acknowledged leaves no marked-only orders behind — its successor publishes them
    unmarked; once a publish is acknowledged (claims confirmed), a replay of the same records is
    marked, and so is another record with the same order id."""
    from streamkit import make_traffic

    from fraudscore.assemble import build_parts
    from stream_app.kafka_source import BatchAbandoned, ConsumerStats, retry_batch
    from stream_app.processor import DUPLICATE_HEADER, OrdersProcessor
    from stream_app.records import SourceRecord

    settings = stream_settings()
    parts = build_parts(settings)
    topics = settings.kafka.topics
    traffic = make_traffic(120, seed=3, duplicate_rate=0, bad_every=0)
    records = [SourceRecord(topics.orders, 0, i, k, v) for i, (k, v) in enumerate(traffic.emitted)]
    ledger = RedisLedger(redis_url, prefix=f"t:{unique}:")

    def worker() -> OrdersProcessor:  # a fresh process: nothing in memory, the shared ledger only
        return OrdersProcessor(parts.pipeline, topics, ledger)

    async def run(proc: OrdersProcessor, sink: _Sink, recs: list[SourceRecord]) -> dict[str, bool]:
        await retry_batch(recs, proc, sink, budget_s=0.3, stats=ConsumerStats())  # type: ignore[arg-type]
        marks: dict[str, bool] = {}
        for out in sink.published:
            for rec in out.by_topic[topics.decisions]:
                marks[rec.key.decode()] = (DUPLICATE_HEADER, b"1") in rec.headers
        return marks

    try:
        with pytest.raises(BatchAbandoned):  # claimed, never acknowledged: the worker "dies" here
            await run(worker(), _Sink(fail=True), records)
        after_crash = await run(worker(), _Sink(), records)
        assert after_crash == {oid: False for oid in traffic.order_ids}, "republished unmarked"
        replay = await run(worker(), _Sink(), records)  # e.g. the commit was lost to a rebalance
        assert replay == {oid: True for oid in traffic.order_ids}, "confirmed: a replay is marked"
        k, v = traffic.emitted[0]
        again = await run(worker(), _Sink(), [SourceRecord(topics.orders, 0, 10_000, k, v)])
        assert list(again.values()) == [True], "another record with the same order id is a repeat"
    finally:
        await ledger.close()
        await parts.store.close()
