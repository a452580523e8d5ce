"""One contract suite, run against every store on its real service (``store_kind`` is parametrized)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from fs_streams import T0, oracle, stream_features

from contracts.events import Label, Order, Payment
from feature_state import metrics
from feature_state.stores.base import FeatureStore
from feature_state.stores.tiled import TiledStore, Update

FS = stream_features()


def order(i: int, seconds: float, **kw: Any) -> Order:
    base: dict[str, Any] = {
        "order_id": f"o{i}", "event_time": T0 + dt.timedelta(seconds=seconds), "customer_id": "c1", "amount": 10.0 + i,
        "currency": "EUR", "merchant_id": "m1", "device_id": "d1", "payment": Payment(card_fingerprint="k1"),
    }
    base.update(kw)
    return Order(**base)


def fraud(o: Order, after_s: float, **kw: Any) -> Label:
    fields: dict[str, Any] = {"merchant_id": o.merchant_id, "customer_id": o.customer_id, **kw}
    return Label(order_id=o.order_id, label="fraud", source="chargeback",
                 label_time=o.event_time + dt.timedelta(seconds=after_s), **fields)


def test_capabilities_are_declared(make_store: Any, store_kind: str) -> None:
    store = make_store(FS)
    assert store.shared is (store_kind != "memory")
    assert store.durable is (store_kind != "memory")
    assert store.batch_writes and store.supports_labels
    assert store.feature_names == FS.names


def test_read_as_of_counts_the_order_once_and_applies_nothing(make_store: Any, run: Any) -> None:
    store = make_store(FS)
    history = [order(i, 30 * i) for i in range(5)]
    run(store.apply_batch(history))
    new = order(9, 200)
    before = run(store.read_as_of([new]))[0]
    assert before["c_cnt_5m"] == 6.0 and before["k_cnt_1h"] == 6.0  # five before it, and itself
    assert run(store.read_as_of([new]))[0] == before  # reading twice changes nothing
    applied = run(store.apply_batch([new])).features[0]
    assert applied == before  # the stream later applies it: same values, not double counted
    assert run(store.read_as_of([new]))[0] == before  # and reading an applied order counts it once
    assert before == oracle(FS, [*history, new], [], new)


def test_duplicates_and_replays_change_nothing(make_store: Any, run: Any) -> None:
    store = make_store(FS)
    batch = [order(i, 17 * i) for i in range(12)]
    first = run(store.apply_batch(batch))
    assert first.applied == 12 * 4 and first.duplicates == 0  # 4 order entities each
    again = run(store.apply_batch(batch[::-1] + batch[:3]))
    assert again.applied == 0 and again.duplicates == 15 * 4
    assert [again.features[batch[::-1].index(o)] for o in batch] == first.features
    assert run(store.read_as_of(batch)) == first.features


def test_out_of_order_within_lateness_equals_in_order(make_store: Any, run: Any) -> None:
    store = make_store(FS, lateness_s=600)
    batch = [order(i, 7 * i + (0.25 if i % 3 else 0)) for i in range(40)]
    for chunk in (batch[30:], batch[10:30:2], batch[:10], batch[11:30:2]):
        assert not run(store.apply_batch(chunk)).late
    got = run(store.read_as_of(batch))
    assert got == [oracle(FS, batch, [], o) for o in batch]


def test_late_event_is_refused_for_every_entity_and_reported(make_store: Any, run: Any) -> None:
    store = make_store(FS, lateness_s=60)
    run(store.apply_batch([order(1, 1000, customer_id="c_late")]))
    # 10 minutes behind customer c_late's watermark; the card k9 has never been seen
    late_order = order(2, 400, customer_id="c_late", payment=Payment(card_fingerprint="k9"))
    before = metrics.LATE_EVENTS.labels("orders", store.kind)._value.get()  # type: ignore[attr-defined]
    res = run(store.apply_batch([late_order]))
    assert [(x.index, x.event_id, x.entity_key) for x in res.late] == [(0, "o2", "o.customer:c_late")]
    assert "behind the watermark" in res.late[0].reason()
    assert res.applied == 0
    assert metrics.LATE_EVENTS.labels("orders", store.kind)._value.get() == before + 1  # type: ignore[attr-defined]
    # not applied to the card either (one decision per event): a new order on k9 sees only itself
    probe = order(3, 1001, customer_id="c_other", payment=Payment(card_fingerprint="k9"))
    assert run(store.read_as_of([probe]))[0]["k_cnt_1h"] == 1.0
    # and a redelivery of the late order is still late (never half-applied later)
    assert len(run(store.apply_batch([late_order])).late) == 1


def test_labels_count_after_their_delay_once_per_order(make_store: Any, run: Any) -> None:
    store = make_store(FS, lateness_s=3600)
    orders = [order(i, 60 * i, merchant_id="mL") for i in range(6)]
    run(store.apply_batch(orders))
    labels = [fraud(orders[0], 100), fraud(orders[0], 200),  # twice for one order: counts once
              fraud(orders[1], 150),
              Label(order_id="o2", label="legit", source="review", label_time=orders[2].event_time, merchant_id="mL"),
              fraud(orders[3], 90, merchant_id=None)]  # without its merchant: cannot count for a merchant
    res = run(store.apply_labels(labels))
    # two merchant label namespaces (delays 30 min and 5 min) × {o0, o1} + the customer one × {o0, o1, o3}
    assert res.applied == 2 * 2 + 3
    assert res.duplicates == 3  # the second fraud label of o0, in each of its three namespaces
    t_known = orders[0].event_time + dt.timedelta(seconds=100 + 30 * 60)  # label_time + 30 min delay
    just_before = order(20, (t_known - T0).total_seconds() - 1, merchant_id="mL")
    at = order(21, (t_known - T0).total_seconds(), merchant_id="mL")
    f_before, f_at = run(store.read_as_of([just_before, at]))
    assert f_before["m_fraud_1d"] == 0.0
    assert f_at["m_fraud_1d"] == 1.0
    assert f_at == oracle(FS, orders, labels, at)


def test_orders_missing_an_entity_get_missing_features(make_store: Any, run: Any) -> None:
    store = make_store(FS)
    o = order(1, 0, merchant_id=None, device_id=None, payment=None)
    f = run(store.apply_batch([o])).features[0]
    assert f["m_cnt_10m"] is None and f["k_cnt_1h"] is None and f["d_customers_1h"] is None
    assert f["c_cnt_5m"] == 1.0


def test_in_batch_duplicate_answers_like_its_first_occurrence(make_store: Any, run: Any) -> None:
    store = make_store(FS)
    a, b = order(1, 0), order(2, 5)
    res = run(store.apply_batch([a, b, a]))
    assert res.features[2] == res.features[0] and res.applied == 8


def test_concurrent_writer_conflict_is_retried_exactly_once(make_store: Any, run: Any, store_kind: str) -> None:
    """Writer A reads, writer B commits the same entities, A commits: A retries on B's state."""
    a = make_store(FS)
    if not a.shared:
        assert store_kind == "memory"  # one process owns an embedded store: no concurrent writers
        return
    kw = {"key_prefix": a.key_prefix} if hasattr(a, "key_prefix") else {"table": a.table}
    b = make_store(FS, **kw)
    assert isinstance(a, TiledStore)
    ours = [order(i, 10 * i) for i in range(5)]
    theirs = [order(100 + i, 10 * i + 3) for i in range(5)]
    original = a._commit
    interleaved = False

    async def commit_after_b(updates: list[Update]) -> list[str]:
        nonlocal interleaved
        if not interleaved:
            interleaved = True
            await b.apply_batch(theirs)
        return await original(updates)

    a._commit = commit_after_b  # type: ignore[method-assign]
    run(a.apply_batch(ours + theirs[:2]))  # also re-sends two of B's orders: must stay exactly once
    everything = ours + theirs
    assert run(a.read_as_of(everything)) == [oracle(FS, everything, [], o) for o in everything]


def test_memory_store_persists_to_a_file(tmp_path: Any, run: Any) -> None:
    from feature_state.stores.memory import MemoryStore

    path = tmp_path / "state" / "features.msgpack"
    store = MemoryStore(FS, 600, persist_path=path)
    assert store.durable
    batch = [order(i, 11 * i) for i in range(8)]
    feats = run(store.apply_batch(batch)).features
    run(store.close())
    reopened = MemoryStore(FS, 600, persist_path=path)
    assert run(reopened.read_as_of(batch)) == feats
    assert run(reopened.apply_batch(batch)).duplicates == 32  # the log survived too
    # a snapshot written for other definitions is set aside, not misread
    other = dataclasses.replace(FS, aggregates=FS.aggregates[:3])
    fresh = MemoryStore(other, 600, persist_path=path)
    assert fresh.entity_count() == 0 and (path.parent / "features.msgpack.incompatible").exists()


def test_store_interface_is_the_one_callers_use(make_store: Any) -> None:
    store: FeatureStore = make_store(FS)
    for name in ("read_as_of", "apply_batch", "apply_and_read", "apply_labels", "ping", "close"):
        assert callable(getattr(store, name))


@pytest.mark.parametrize("store_kind", ["redis"], indirect=True)
def test_redis_keys_share_one_hash_slot_and_expire(make_store: Any, run: Any, redis_url: str) -> None:
    import redis as redis_sync

    store = make_store(FS)
    run(store.apply_batch([order(1, 0)]))
    client = redis_sync.Redis.from_url(redis_url)
    try:
        keys = sorted(k.decode() for k in client.keys(f"{store.key_prefix}:*"))
        assert f"{store.key_prefix}:{{o.customer:c1}}:s" in keys
        slots = {client.cluster_keyslot(k) if False else k.split("{")[1].split("}")[0] for k in keys}
        assert {"o.customer:c1", "o.card:k1", "o.merchant:m1", "o.device:d1"} == slots
        ttl = client.pttl(f"{store.key_prefix}:{{o.customer:c1}}:s")
        assert 0 < ttl <= store.layout.ttl_s * 1000
    finally:
        client.close()


def test_crash_between_entity_commits_then_redelivery_is_exactly_once(make_store: Any, run: Any) -> None:
    """The store dies after committing some entities of a batch; the stream redelivers the batch."""
    from feature_state.exceptions import FeatureStoreUnavailable

    store = make_store(FS)
    assert isinstance(store, TiledStore)
    batch = [order(i, 13 * i, customer_id=f"c{i % 3}") for i in range(9)]
    original = store._commit

    async def half_then_die(updates: list[Update]) -> list[str]:
        await original(updates[: len(updates) // 2])
        raise FeatureStoreUnavailable("connection lost mid-commit")

    store._commit = half_then_die  # type: ignore[method-assign]
    with pytest.raises(FeatureStoreUnavailable):
        run(store.apply_batch(batch))
    store._commit = original  # type: ignore[method-assign]
    redelivered = run(store.apply_batch(batch))
    assert redelivered.duplicates > 0 and redelivered.applied > 0
    assert redelivered.applied + redelivered.duplicates == 9 * 4
    assert run(store.read_as_of(batch)) == [oracle(FS, batch, [], o) for o in batch]
