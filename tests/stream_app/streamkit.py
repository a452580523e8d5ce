"""Helpers for the stream tests: deterministic traffic with duplicates, reordering and bad events,
producing it to Kafka, reading topics back, and an oracle store to compare aggregates against.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.events import Label, Order, decode_order, encode, to_builtins

START = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)
BAD_KINDS = ("invalid_json", "missing_fields", "negative_amount", "naive_timestamp", "pan_in_field")


@dataclass
class Traffic:
    """What was emitted, in emission order, and the truth about it."""

    emitted: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, value)
    orders: list[Order] = field(default_factory=list)  # unique valid orders
    duplicates: list[str] = field(default_factory=list)  # order ids emitted twice
    bad: list[tuple[str, bytes]] = field(default_factory=list)  # (kind, raw bytes)

    @property
    def order_ids(self) -> set[str]:
        return {o.order_id for o in self.orders}


def _luhn(partial: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return partial + str((10 - total % 10) % 10)


def make_traffic(
    n: int,
    *,
    seed: int = 7,
    customers: int = 500,
    duplicate_rate: float = 0.05,
    reorder_window_s: float = 120.0,
    bad_every: int = 0,
    rate_per_s: float = 20.0,
    prefix: str = "o",
    all_entities: bool = False,
) -> Traffic:
    """``n`` unique orders (plus duplicates and bad events), event times ``1/rate_per_s`` apart on average,
    emitted shuffled within ``reorder_window_s`` of event time.

    ``all_entities`` also gives every order an ``email_domain`` (one per customer, ~200 domains shared
    by many customers) and a ``terminal_id`` (a few per merchant), so every entity kind of the default
    feature set is exercised; they come from a separate random stream, so everything else is the same."""
    rng = random.Random(seed)
    cards = {f"c{i}": [f"card-{i}-{j}" for j in range(1 + i % 2)] for i in range(customers)}
    extra = random.Random(f"{seed}-entities")
    email_of = {f"c{i}": f"mail{extra.randrange(200)}.example" for i in range(customers)} if all_entities else {}
    countries = ["FR", "DE", "US", "GB", "ES"]
    t = START
    orders: list[Order] = []
    for i in range(n):
        t += dt.timedelta(seconds=rng.expovariate(rate_per_s))
        cust = f"c{rng.randrange(customers)}"
        bill = rng.choice(countries)
        # drawn in the order the fields below used to draw them: the same seed gives the same traffic
        amount = round(rng.lognormvariate(3.5, 1.0), 2)
        created = START - dt.timedelta(days=rng.randrange(0, 900))
        merchant = f"m{rng.randrange(40)}"
        orders.append(Order(
            order_id=f"{prefix}-{seed}-{i}",
            event_time=t,
            customer_id=cust,
            amount=amount,
            currency="EUR",
            account_created_at=created,
            merchant_id=merchant,
            terminal_id=f"{merchant}-t{extra.randrange(4)}" if all_entities else None,
            email_domain=email_of.get(cust),
            channel=rng.choice(["web", "app", "pos"]),
            payment={"method": "card", "card_fingerprint": rng.choice(cards[cust]), "card_country": bill},  # type: ignore[arg-type]
            ip_address=f"10.0.{rng.randrange(50)}.{rng.randrange(50)}",
            ip_country=rng.choice(countries),
            device_id=f"d{rng.randrange(customers * 2)}",
            billing_country=bill,
            shipping_country=bill if rng.random() < 0.9 else rng.choice(countries),
        ))
    orders = [msgspec.convert(to_builtins(o), Order) for o in orders]
    # (emission sort key, key, value)
    stream: list[tuple[float, bytes, bytes]] = []
    traffic = Traffic(orders=orders)
    for o in orders:
        ts = o.event_time.timestamp()
        raw = encode(o)
        jitter = rng.uniform(0, reorder_window_s)
        stream.append((ts + jitter, o.customer_id.encode(), raw))
        if rng.random() < duplicate_rate:
            traffic.duplicates.append(o.order_id)
            stream.append((ts + jitter + rng.uniform(1, reorder_window_s), o.customer_id.encode(), raw))
    if bad_every:
        for j, o in enumerate(orders[::bad_every]):
            kind = BAD_KINDS[j % len(BAD_KINDS)]
            raw = bad_event(o, f"bad-{seed}-{j}", kind, rng)
            traffic.bad.append((kind, raw))
            stream.append((o.event_time.timestamp() + 0.5, o.customer_id.encode(), raw))
    stream.sort(key=lambda e: e[0])
    traffic.emitted = [(k, v) for _, k, v in stream]
    return traffic


def bad_event(template: Order, bad_id: str, kind: str, rng: random.Random) -> bytes:
    doc: dict[str, Any] = to_builtins(template)
    doc["order_id"] = bad_id
    if kind == "invalid_json":
        return msgspec.json.encode(doc)[:-7]
    if kind == "missing_fields":
        doc.pop("customer_id")
        doc.pop("currency")
    elif kind == "negative_amount":
        doc["amount"] = -5.0
    elif kind == "naive_timestamp":
        doc["event_time"] = template.event_time.replace(tzinfo=None).isoformat()
    else:
        pan = _luhn("4" + "".join(str(rng.randrange(10)) for _ in range(14)))
        doc["payment"] = {**doc["payment"], "card_fingerprint": pan}
    return msgspec.json.encode(doc)


def sha(raw: bytes) -> str:
    """The dead-letter envelope's ``payload_sha256`` of ``raw``."""
    from stream_app.deadletter import payload_digest

    return payload_digest(raw)


def labels_for(orders: Sequence[Order], every: int = 50) -> list[Label]:
    out = []
    for i, o in enumerate(orders):
        if i % every == 0:
            out.append(Label(order_id=o.order_id, label="fraud" if (i // every) % 3 == 0 else "legit",
                             source="chargeback", label_time=o.event_time + dt.timedelta(days=30),
                             customer_id=o.customer_id))
    return out


async def consumed(worker: Any, task: asyncio.Task[Any], role: str, n: int, timeout_s: float = 120.0) -> None:
    """Wait until ``worker``'s ``role`` consumer has taken ``n`` records; re-raises the worker's failure."""
    deadline = time.monotonic() + timeout_s
    while not (worker.consumers and worker.consumers[role].stats.events >= n):
        if task.done():
            task.result()
            raise AssertionError(f"the worker stopped before consuming {n} {role} records")
        if time.monotonic() > deadline:
            raise AssertionError(f"the {role} consumer did not reach {n} records: {worker.consumers[role].stats}")
        await asyncio.sleep(0.05)


async def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", max_batch_size=256 * 1024)
    await producer.start()
    n = 0
    try:
        futures = []
        for key, value in records:
            futures.append(await producer.send(topic, value, key=key))
            n += 1
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return n


@dataclass
class Read:
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int


async def read_all(bootstrap: str, topic: str, *, expect_at_least: int = 0, idle_s: float = 2.0,
                   timeout_s: float = 120.0) -> list[Read]:
    """Every record of ``topic`` (no group), waiting until ``expect_at_least`` have arrived and the topic is idle."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = await _partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p) for p in parts])
        await consumer.seek_to_beginning()
        out: list[Read] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last_new = loop.time()
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
            got = 0
            for tp, msgs in batch.items():
                for m in msgs:
                    headers = dict(m.headers or ())
                    out.append(Read(m.key, m.value or b"", headers, tp.partition, m.offset))
                    got += 1
            if got:
                last_new = loop.time()
            elif len(out) >= expect_at_least and loop.time() - last_new >= idle_s:
                break
        return out
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    for _ in range(100):
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return sorted(parts)
        await consumer._client.force_metadata_update()  # noqa: SLF001 - test helper
        await asyncio.sleep(0.05)
    raise AssertionError(f"topic {topic} has no partitions")


def probe_orders(orders: Sequence[Order], at: dt.datetime) -> list[Order]:
    """One probe order per distinct entity combination, at ``at``: reading it as of ``at`` shows every
    aggregate of its customer, card, device, IP and merchant."""
    out = []
    for i, o in enumerate(orders):
        out.append(msgspec.structs.replace(o, order_id=f"probe-{i}", event_time=at))
    return out


def covering_orders(orders: Sequence[Order], entities: dict[str, str]) -> list[Order]:
    """The first order of every entity of every kind in ``entities`` (the feature set's name → order
    field path): probes made from them read every aggregate the orders touched."""
    from feature_state.layout import field_value

    seen: set[tuple[str, Any]] = set()
    out = []
    for o in orders:
        keys = {(kind, v) for kind, path in entities.items() if (v := field_value(o, path)) is not None}
        if not keys <= seen:
            seen |= keys
            out.append(o)
    return out


def decoded(reads: Sequence[Read]) -> list[tuple[Read, Order]]:
    return [(r, decode_order(r.value)) for r in reads]
