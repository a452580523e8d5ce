"""The compiled batch path equals the Python reference path, bit for bit and byte for byte.

Random micro-batches built to stress what the kernel does differently from the per-order Python code:
many orders of the same entity inside one batch, event times packed around minute/hour/day tile
boundaries, reorderings within the lateness, duplicates inside a batch and across batches, events
beyond the lateness (late), and fraud labels in between. For every batch both paths must return the
same features, the same late events (index, id, times, entity), the same duplicate / applied counts,
and leave byte-identical packed states and logs; reads as of arbitrary times must agree and equal the
naive oracle. Also: the packed codecs of C and Python agree, legacy msgpack states are read, and a
batch the kernel refuses is answered by the Python path.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import msgspec
import pytest
from fs_streams import T0, make_labels, oracle, stream_features
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts.events import Label, Order, Payment
from feature_state import codec, kernel
from feature_state.layout import US, to_us
from feature_state.stores.memory import MemoryStore
from feature_state.windows import decode_state
from tests.services import missing

FS = stream_features()



@pytest.fixture(autouse=True)
def _compiled_kernel() -> None:
    """These tests are about the compiled kernel: without a C compiler they skip locally, fail in CI."""
    if kernel.load() is None:
        missing("a C compiler for the feature_state kernel (cc / gcc)")

batch_streams = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "n": st.integers(20, 160),
    "lateness_s": st.sampled_from([90, 600, 3600]),
    "max_batch": st.integers(1, 120),
    "dup_share": st.floats(0.0, 0.4),
    "late_share": st.floats(0.0, 0.15),
    "label_share": st.floats(0.0, 0.5),
})

#: tile boundaries the stream clusters around: minutes, hours and UTC days (T0 is 22:30 on a Friday)
_BOUNDARIES_S = [90 * 60, 90 * 60 + 60, 30 * 60, 2 * 3600 + 30 * 60, 86400 + 90 * 60, 3 * 3600 + 30 * 60 + 120]


def boundary_orders(rng: random.Random, n: int) -> list[Order]:
    """Few entities (long same-entity runs) and times packed within seconds of tile edges."""
    out = []
    for i in range(n):
        base = rng.choice(_BOUNDARIES_S)
        us = int((base + rng.uniform(-3.0, 3.0)) * US) if rng.random() < 0.8 else int(rng.uniform(0, 2 * 86400) * US)
        if rng.random() < 0.2:
            us = us // US * US  # exact-second ties
        zone = rng.choice([dt.UTC, dt.timezone(dt.timedelta(hours=2))])
        out.append(Order(
            order_id=f"b{i:04d}{rng.choice('xyz')}",
            event_time=(T0 + dt.timedelta(microseconds=us)).astimezone(zone),
            customer_id=f"c{rng.randrange(2)}",
            amount=round(rng.uniform(0, 300), rng.choice((0, 2))),
            currency="EUR",
            merchant_id=rng.choice(["m0", "m1", None]),
            device_id=rng.choice(["d0", "d1", None]),
            payment=Payment(card_fingerprint=rng.choice(["k0", "k1", None])),
            billing_country=rng.choice(["FR", None]),
            shipping_country="FR",
            account_created_at=rng.choice([None, T0 - dt.timedelta(days=3)]),
        ))
    return out


def arrivals(rng: random.Random, orders: list[Order], labels: list[Label], p: dict[str, Any]) -> list[Any]:
    """Arrival order: event time plus a delay within the lateness, duplicates, and some far-late events."""
    lat = p["lateness_s"]

    def t(e: Any) -> int:
        return to_us(e.event_time if isinstance(e, Order) else e.label_time)

    keyed = [(t(e) + int(rng.uniform(0, 0.9 * lat) * US), rng.random(), e) for e in [*orders, *labels]]
    for e in orders:
        if rng.random() < p["dup_share"]:
            keyed.append((t(e) + int(rng.uniform(0, 0.9 * lat) * US), rng.random(), e))
        if rng.random() < p["late_share"]:  # arrives long after: late for its entities
            keyed.append((t(e) + int((lat * 3 + 7200) * US), rng.random(), e))
    keyed.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in keyed]


def batches(rng: random.Random, items: list[Any], max_batch: int) -> list[list[Any]]:
    """Runs of one kind; order batches sometimes repeat one of their own orders (in-batch duplicates)."""
    out: list[list[Any]] = []
    cur: list[Any] = []
    limit = rng.randint(1, max_batch)
    for x in items:
        if cur and (type(x) is not type(cur[0]) or len(cur) >= limit):
            out.append(cur)
            cur, limit = [], rng.randint(1, max_batch)
        cur.append(x)
        if isinstance(x, Order) and rng.random() < 0.05:
            cur.append(x)
    if cur:
        out.append(cur)
    return out


def _late(res: Any) -> list[tuple[int, str, int, int, str]]:
    return [(x.index, x.event_id, x.event_time_us, x.watermark_us, x.entity_key) for x in res.late]


def _given(n: int) -> Any:
    return settings(max_examples=n, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@_given(100)
@given(p=batch_streams)
def test_compiled_batches_equal_the_python_path(p: dict[str, Any]) -> None:
    import asyncio

    rng = random.Random(p["seed"])
    orders = boundary_orders(rng, p["n"])
    # labels known by the last order (reads of the final state are then all within the retention)
    last = max(to_us(o) for o in orders)
    labels = [lb for lb in make_labels(rng, orders, p["label_share"]) if to_us(lb.label_time) <= last]
    compiled = MemoryStore(FS, p["lateness_s"], use_kernel=True)
    python = MemoryStore(FS, p["lateness_s"], use_kernel=False)
    assert compiled.uses_kernel and not python.uses_kernel

    async def scenario() -> None:
        late_seen = 0
        for b in batches(rng, arrivals(rng, orders, labels, p), p["max_batch"]):
            if isinstance(b[0], Label):
                ra, rb = await compiled.apply_labels(b), await python.apply_labels(b)
            else:
                ra, rb = await compiled.apply_batch(b), await python.apply_batch(b)
                assert ra.features == rb.features
            assert _late(ra) == _late(rb)
            assert (ra.duplicates, ra.applied, ra.partial) == (rb.duplicates, rb.applied, rb.partial)
            late_seen += len(ra.late)
        assert compiled.states == python.states  # byte-identical packed states
        assert compiled.logs == python.logs  # and packed exactly-once logs
        assert compiled.entity_count() == python.entity_count()
        assert compiled.logged_events() == python.logged_events()
        # reads at arbitrary times (in order, out of order, on tile edges) agree, and equal the oracle
        # when nothing was late (the oracle has no notion of lateness)
        probes = [msgspec.structs.replace(rng.choice(orders), order_id=f"probe{j}", event_time=T0 + dt.timedelta(
            microseconds=int((rng.choice(_BOUNDARIES_S) + rng.uniform(-2, 2)) * US))) for j in range(8)]
        probes += rng.sample(orders, min(8, len(orders)))
        ra_, rb_ = await compiled.read_as_of(probes), await python.read_as_of(probes)
        assert ra_ == rb_
        if late_seen == 0:
            for o, f in zip(probes, ra_, strict=True):
                if to_us(o) >= last - p["lateness_s"] * US:
                    assert f == oracle(FS, orders, labels, o), o.order_id

    asyncio.run(scenario())


@pytest.mark.parametrize("engine", ["compiled", "python"], indirect=True)
@pytest.mark.parametrize("store_kind", ["redis", "redis_cluster"], indirect=True)
def test_remote_batches_equal_the_embedded_python_path(make_store: Any, run: Any, store_kind: str) -> None:
    """The Redis batch scripts (one node) and the cluster's per-entity commands, against the reference.

    The streams are chosen so that every branch is taken: late events, duplicates (in and across
    batches), and reads that need the event log of a minute (fetched in a second round trip).
    """
    from feature_state import metrics

    def counter(c: Any, *labels: str) -> float:
        return float(c.labels(*labels)._value.get())

    log_reads = counter(metrics.OUT_OF_ORDER_READS, store_kind)
    late = dups = 0
    for seed in (3, 11):
        rng = random.Random(seed)
        p = {"lateness_s": 600, "dup_share": 0.3, "late_share": 0.1, "label_share": 0.3}
        orders = boundary_orders(rng, 90)
        labels = make_labels(rng, orders, 0.3)
        remote = make_store(FS, 600)
        ref = MemoryStore(FS, 600, use_kernel=False)
        for b in batches(rng, arrivals(rng, orders, labels, p), 70):
            if isinstance(b[0], Label):
                ra, rb = run(remote.apply_labels(b)), run(ref.apply_labels(b))
            else:
                ra, rb = run(remote.apply_batch(b)), run(ref.apply_batch(b))
                assert ra.features == rb.features
            assert _late(ra) == _late(rb)
            assert (ra.duplicates, ra.applied) == (rb.duplicates, rb.applied)
            late += len(ra.late)
            dups += ra.duplicates
        assert run(remote.read_as_of(orders)) == run(ref.read_as_of(orders))
    assert late and dups and counter(metrics.OUT_OF_ORDER_READS, store_kind) > log_reads


def test_packed_codecs_of_c_and_python_agree() -> None:
    """Every state the stream produces: Python decode → encode is the identity, and so is the C round trip."""
    rng = random.Random(5)
    store = MemoryStore(FS, 3600, use_kernel=False)
    import asyncio

    orders = boundary_orders(rng, 150)
    for i in range(0, len(orders), 30):
        asyncio.run(store.apply_batch(orders[i : i + 30]))
    kl = kernel.KernelLayout(store.layout)
    assert store.states
    for key, blob in store.states.items():
        ns = store.layout.namespace_of_key(key)
        assert codec.encode(ns, decode_state(ns, blob)) == blob, key
        assert kernel.roundtrip(kl, ns.name, blob) == blob, key
    for key, blob in store.logs.items():
        ns = store.layout.namespace_of_key(key)
        assert codec.encode_log(ns, codec.decode_log(ns, blob), -(2**62)) == blob, key


def test_legacy_msgpack_states_are_read_and_rewritten_packed() -> None:
    """A state written before the packed format (msgpack) is read by both paths and rewritten packed."""
    import asyncio

    orders = boundary_orders(random.Random(8), 40)
    ref = MemoryStore(FS, 3600, use_kernel=False)
    asyncio.run(ref.apply_batch(orders[:20]))
    for use_kernel in (True, False):
        store = MemoryStore(FS, 3600, use_kernel=use_kernel)
        for key, blob in ref.states.items():
            ns = ref.layout.namespace_of_key(key)
            store._put(key, msgspec.msgpack.encode(decode_state(ns, blob)), ref.logs[key])  # the msgpack format
        assert not any(codec.is_packed(b) for b in store.states.values())
        assert asyncio.run(store.read_as_of(orders)) == asyncio.run(ref.read_as_of(orders))
        fresh = MemoryStore(FS, 3600, use_kernel=False)
        asyncio.run(fresh.apply_batch(orders[:20]))
        got = asyncio.run(store.apply_batch(orders[20:])).features
        assert got == asyncio.run(fresh.apply_batch(orders[20:])).features
        rewritten = {k for k, b in store.states.items() if codec.is_packed(b)}
        assert rewritten  # every entity the second batch wrote is packed now, equal to the reference
        assert {k: store.states[k] for k in rewritten} == {k: fresh.states[k] for k in rewritten}


def test_a_batch_the_kernel_refuses_is_answered_by_the_python_path() -> None:
    """Ids Arrow cannot hold (a lone surrogate): the compiled store falls back, with the same results."""
    import asyncio

    orders = boundary_orders(random.Random(2), 30)
    odd = [msgspec.structs.replace(o, order_id=o.order_id + "\ud800") if i % 7 == 0 else o
           for i, o in enumerate(orders)]
    compiled = MemoryStore(FS, 3600, use_kernel=True)
    python = MemoryStore(FS, 3600, use_kernel=False)
    for b in (odd[:15], odd[15:]):
        assert asyncio.run(compiled.apply_batch(b)).features == asyncio.run(python.apply_batch(b)).features
    assert compiled.states == python.states
    assert asyncio.run(compiled.read_as_of(odd)) == asyncio.run(python.read_as_of(odd))


@pytest.mark.parametrize("use_kernel", [True, False])
def test_lateness_and_log_retention_edges_are_exact(use_kernel: bool) -> None:
    """Exactly ``lateness`` behind the watermark is accepted, 1 µs more is late; a log entry exactly at
    the retention floor (watermark − lateness − 1 min) is kept. Both paths, byte-identical logs."""
    import asyncio

    lateness = 600
    store = MemoryStore(FS, lateness, use_kernel=use_kernel)
    ref = MemoryStore(FS, lateness, use_kernel=False)

    def at(i: int, us: int) -> Order:
        return Order(order_id=f"e{i}", event_time=T0 + dt.timedelta(microseconds=us), customer_id="c9",
                     amount=1.0, currency="EUR")

    head = at(1, 10_000 * US)
    edge = at(2, 10_000 * US - lateness * US)  # exactly the lateness behind: accepted
    past = at(3, 10_000 * US - lateness * US - 1)  # one microsecond more: late
    for s in (store, ref):
        assert not asyncio.run(s.apply_batch([head])).late
        assert not asyncio.run(s.apply_batch([edge])).late
        assert [x.event_id for x in asyncio.run(s.apply_batch([past])).late] == ["e3"]
    # the log keeps lateness + 1 min behind the watermark: an entry exactly at that floor stays
    floor_at = 10_000 * US + (lateness + 60) * US
    for s in (store, ref):
        asyncio.run(s.apply_batch([at(4, floor_at)]))
    assert store.logs == ref.logs
    ns = store.layout.namespace_of_key("o.customer:c9")
    assert [ev.id for ev in codec.decode_log(ns, store.logs["o.customer:c9"])] == ["e1", "e4"]  # e1 is at the floor
    assert store.logged_events() == ref.logged_events() == 2
    assert store.states == ref.states


def test_amounts_outside_the_fixed_point_range_count_as_missing_everywhere() -> None:
    """An infinite amount (an overflowing JSON number decodes to inf) or a huge one does not fail the
    batch: online (both paths), the replay and the oracle all treat it as missing."""
    import asyncio

    from feature_state.replay import replay

    orders = boundary_orders(random.Random(6), 12)
    odd = [msgspec.structs.replace(o, amount=float("inf")) if i % 4 == 0 else
           msgspec.structs.replace(o, amount=1e15) if i % 4 == 1 else o for i, o in enumerate(orders)]
    compiled = MemoryStore(FS, 3600, use_kernel=True)
    python = MemoryStore(FS, 3600, use_kernel=False)
    a = asyncio.run(compiled.apply_batch(odd)).features
    assert a == asyncio.run(python.apply_batch(odd)).features
    assert compiled.states == python.states
    inorder = sorted(odd, key=lambda o: (to_us(o), o.order_id))
    assert replay(FS, inorder).rows() == [oracle(FS, odd, [], o) for o in inorder]
