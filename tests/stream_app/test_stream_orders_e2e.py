"""Orders → decisions, actions and dead letters through a real broker, one in-process worker."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from streamkit import Traffic, make_traffic, probe_orders, produce, read_all, sha

from contracts.config import Settings
from contracts.events import Action, Decision, encode
from contracts.pan import bytes_may_contain_pan, contains_pan
from feature_state.definitions import load_feature_set
from feature_state.stores.memory import MemoryStore
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kafka import ensure_topics
from stream_app.processor import DUPLICATE_HEADER
from stream_app.worker import StreamWorker

Wait = Callable[[Callable[[], Any]], Awaitable[None]]


@contextlib.asynccontextmanager
async def running(worker: StreamWorker, timeout_s: float = 240.0) -> AsyncIterator[Wait]:
    """Runs ``worker`` until the block ends; yields ``wait(done)``, which polls ``done()`` until true
    (failing if the worker stops or ``timeout_s`` passes)."""
    task = asyncio.create_task(worker.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    async def wait(done: Callable[[], Any]) -> None:
        while not done():
            if task.done():
                task.result()
                raise AssertionError("worker stopped early")
            assert loop.time() < deadline, f"timed out; stats {worker.stats}"
            await asyncio.sleep(0.1)

    try:
        yield wait
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)


async def run_until(worker: StreamWorker, done: Any, timeout_s: float = 240.0) -> None:
    async with running(worker, timeout_s) as wait:
        await wait(done)


async def oracle_features(traffic: Traffic, probes_at: dt.datetime) -> list[dict[str, float | None]]:
    oracle = MemoryStore(load_feature_set(None), allowed_lateness_s=10**9)
    await oracle.apply_and_read(sorted(traffic.orders, key=lambda o: o.event_time))
    return await oracle.read_as_of(probe_orders(traffic.orders[::7], probes_at))


def check_effects(traffic: Traffic, decisions: list[Any], actions: list[Any], *, allow_marked_only: bool = False
                  ) -> dict[str, Decision]:
    """Exactly one unmarked decision per unique order (marked repeats allowed), actions to match."""
    unmarked: Counter[str] = Counter()
    marked: Counter[str] = Counter()
    first: dict[str, Decision] = {}
    for r in decisions:
        d = msgspec.json.decode(r.value, type=Decision)
        assert r.key == d.order_id.encode()
        if r.headers.get(DUPLICATE_HEADER) == b"1":
            marked[d.order_id] += 1
        else:
            unmarked[d.order_id] += 1
            first[d.order_id] = d
        first.setdefault(d.order_id, d)
    ids = traffic.order_ids
    assert set(unmarked) | set(marked) == ids, "every valid order decided, nothing else"
    assert max(unmarked.values()) == 1, "at most one unmarked decision per order_id"
    if not allow_marked_only:
        assert set(unmarked) == ids
    act_ids = Counter()
    for r in actions:
        a = msgspec.json.decode(r.value, type=Action)
        if r.headers.get(DUPLICATE_HEADER) != b"1":
            act_ids[a.order_id] += 1
        assert first[a.order_id].decision == a.action or r.headers.get(DUPLICATE_HEADER) == b"1"
    non_allow = {oid for oid, d in first.items() if d.decision != "allow" and oid in unmarked}
    assert set(act_ids) == non_allow and (not act_ids or max(act_ids.values()) == 1)
    return first


def check_dead_letters(traffic: Traffic, reads: list[Any], topic: str) -> None:
    assert len(reads) == len(traffic.bad)
    by_sha = {sha(raw): kind for kind, raw in traffic.bad}
    pan_count = sum(1 for kind, _ in traffic.bad if kind == "pan_in_field")
    masked = 0
    for r in reads:
        assert not bytes_may_contain_pan(r.value) or not contains_pan(r.value.decode()), "a card number leaked"
        dl = decode_dead_letter(r.value)
        assert dl.topic == topic and isinstance(dl.partition, int) and isinstance(dl.offset, int)
        assert dl.error and dl.error_type
        if dl.masked:
            masked += 1
            assert dl.stage == "card_number" and dl.payload_sha256 is None
        else:
            assert dl.payload_sha256 in by_sha and dl.stage == "decode"
    assert masked == pan_count


async def test_orders_decided_once_with_duplicates_reordering_and_bad_events(stream_settings: Any) -> None:
    """…then, in a later batch, an order older than its entities' watermark minus the allowed lateness:
    dead-lettered with stage ``late``, not decided, not applied; the good order after it is decided."""
    settings: Settings = stream_settings()
    await ensure_topics(settings.kafka)
    traffic = make_traffic(3000, seed=3, bad_every=100, duplicate_rate=0.05, reorder_window_s=120)
    bs = settings.kafka.bootstrap or ""
    t = settings.kafka.topics
    await produce(bs, t.orders, traffic.emitted)
    parts = build_parts(settings)
    assert parts.models.current is not None
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("orders",))
    expected = len(traffic.emitted)
    # Same customer (so same partition, in this order), produced once everything above is decided.
    template = traffic.orders[0]
    lateness = dt.timedelta(seconds=settings.feature_store.allowed_lateness_s)
    late = msgspec.structs.replace(template, order_id="late-3-0",
                                   event_time=template.event_time - lateness - dt.timedelta(minutes=10))
    good = msgspec.structs.replace(template, order_id="after-late-3-0",
                                   event_time=max(o.event_time for o in traffic.orders) + dt.timedelta(seconds=1))
    async with running(worker) as wait:
        await wait(lambda: worker.consumers and worker.consumers["orders"].stats.events >= expected)
        batches = worker.consumers["orders"].stats.batches
        await produce(bs, t.orders, [(o.customer_id.encode(), encode(o)) for o in (late, good)])
        await wait(lambda: worker.consumers["orders"].stats.events >= expected + 2)
    st = worker.consumers["orders"].stats
    assert st.batches > batches, "the late order came in a later batch than the orders it trails"
    assert (st.events, st.dead_letters, st.duplicates) == (expected + 2, len(traffic.bad) + 1,
                                                           len(traffic.duplicates))
    decided = Traffic(emitted=traffic.emitted, orders=[*traffic.orders, good], duplicates=traffic.duplicates,
                      bad=traffic.bad)
    decisions = await read_all(bs, t.decisions, expect_at_least=len(decided.orders))
    actions = await read_all(bs, t.actions)
    first = check_effects(decided, decisions, actions)  # the good order decided, the late one not
    assert all(d.score is not None and d.model_version for d in first.values())
    letters = await read_all(bs, t.dead_letters, expect_at_least=len(traffic.bad) + 1)
    late_letters = [r for r in letters if decode_dead_letter(r.value).stage == "late"]
    check_dead_letters(traffic, [r for r in letters if r not in late_letters], t.orders)
    assert len(late_letters) == 1
    dl = decode_dead_letter(late_letters[0].value)
    assert (dl.error_type, dl.topic, dl.key, dl.payload_sha256) == ("LateEventError", t.orders,
                                                                      late.customer_id, sha(encode(late)))
    assert "late-3-0" in dl.error and "allowed lateness" in dl.error, dl.error
    assert late_letters[0].headers.get("fraudscore-stage") == b"late"
    # The late order changed no aggregate: the store equals an oracle fed every order but it.
    at = good.event_time + dt.timedelta(seconds=1)
    got = await parts.store.read_as_of(probe_orders(decided.orders[::7], at))
    assert got == await oracle_features(decided, at)
