"""Scale-out: workers joining and leaving one consumer group mid-stream lose and double-count nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from streamkit import make_traffic, probe_orders, produce, read_all
from test_stream_orders_e2e import check_dead_letters, check_effects, oracle_features

from fraudscore.assemble import build_parts
from stream_app.kafka import ensure_topics
from stream_app.ledger import MemoryLedger
from stream_app.worker import StreamWorker


async def wait_for(cond: Any, timeout_s: float = 120.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_workers_join_and_leave_mid_stream(stream_settings: Any) -> None:
    settings = stream_settings(**{"stream.max_batch": 200})
    await ensure_topics(settings.kafka)
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    traffic = make_traffic(6000, seed=5, bad_every=200)
    chunks = [traffic.emitted[i::3] for i in range(3)]  # interleaved thirds keep each key's order roughly
    # One shared store and ledger (as Redis would be for separate processes); the workers are
    # separate members of one consumer group.
    parts = build_parts(settings)
    ledger = MemoryLedger()

    def new_worker() -> StreamWorker:
        return StreamWorker(settings, parts.pipeline, parts.store, roles=("orders",), ledger=ledger)

    def events(*ws: StreamWorker) -> int:
        return sum(w.consumers["orders"].stats.events for w in ws if "orders" in w.consumers)

    a, b = new_worker(), new_worker()
    ta = asyncio.create_task(a.run())
    await produce(bs, t.orders, chunks[0])
    await wait_for(lambda: events(a) >= len(chunks[0]), what="worker A")
    tb = asyncio.create_task(b.run())  # B joins: the group rebalances while chunk 2 arrives
    await produce(bs, t.orders, chunks[1])
    await wait_for(lambda: bool(b.consumers) and bool(b.consumers["orders"].stats.assigned), what="B assigned")
    await wait_for(lambda: events(a, b) >= len(chunks[0]) + len(chunks[1]), what="chunk 2")
    a.stop()  # A leaves: its partitions move to B after its last batch is committed
    await asyncio.wait_for(ta, 60)
    await produce(bs, t.orders, chunks[2])
    await wait_for(lambda: events(a, b) >= len(traffic.emitted), what="everything")
    b.stop()
    await asyncio.wait_for(tb, 60)

    assert events(a, b) == len(traffic.emitted), "graceful rebalances replay nothing"
    decisions = await read_all(bs, t.decisions, expect_at_least=len(traffic.orders))
    check_effects(traffic, decisions, await read_all(bs, t.actions))
    check_dead_letters(traffic, await read_all(bs, t.dead_letters, expect_at_least=len(traffic.bad)), t.orders)
    at = max(o.event_time for o in traffic.orders) + dt.timedelta(seconds=1)
    assert await parts.store.read_as_of(probe_orders(traffic.orders[::7], at)) == await oracle_features(traffic, at)
