"""Property tests: random streams against a naive oracle, on every store, and replay bit for bit.

* In event-time order (orders and labels interleaved as a live system sees them, in random
  batches), every store's ``apply_batch`` features equal the oracle and the vectorised replay,
  bit for bit.
* Shuffled within the lateness and with duplicates, nothing is late, every (entity, event) is
  applied exactly once, the final state equals the in-order state (memory store: byte-identical
  tiles), and ``read_as_of`` of the stream's tail and of new probe orders equals the oracle.

Both hold for the compiled kernel and for the pure-Python reference path (``engine``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from fs_streams import (
    arrival_order,
    interleave,
    make_labels,
    make_orders,
    oracle,
    probes,
    split_runs,
    stream_features,
)
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from contracts.events import Label, Order
from feature_state.layout import US, to_us
from feature_state.replay import replay
from feature_state.stores.base import FeatureStore
from feature_state.stores.memory import MemoryStore
from feature_state.windows import EntityState, decode_state

FS = stream_features()
#: examples per store kind (remote stores are slower; moto's DynamoDB much slower)
EXAMPLES = {"memory": 30, "redis": 8, "redis_cluster": 5, "dynamodb": 3}
SIZES = {"memory": 120, "redis": 100, "redis_cluster": 80, "dynamodb": 40}

streams = st.fixed_dictionaries({
    "seed": st.integers(0, 2**32 - 1),
    "span_s": st.sampled_from([1800, 6 * 3600, 3 * 86400]),
    "lateness_s": st.sampled_from([120, 900, 3600]),
    "burst": st.floats(0.0, 0.9),
    "max_batch": st.integers(1, 60),
})


def canonical(state: EntityState) -> Any:
    """A state as comparable builtins (sets sorted: their encoding order depends on insertion)."""
    return {
        "wm": (state.wm, state.wm_id),
        "last": [tuple(k) for k in state.last],
        "tiles": {r: {i: (t.n, t.t, t.i, t.c, t.s, [lo if c else None for lo, c in zip(t.lo, t.c, strict=True)],
                          [hi if c else None for hi, c in zip(t.hi, t.c, strict=True)], [sorted(d) for d in t.d])
                      for i, t in level.items()} for r, level in state.tiles.items() if level},
    }


def drive(store: FeatureStore, run: Any, items: list[Order | Label], rng: random.Random, max_batch: int
          ) -> tuple[dict[str, dict[str, float | None]], int, int]:
    """Apply the items in arrival order; first features of each order, late count, applied pairs."""
    first: dict[str, dict[str, float | None]] = {}
    late = applied = 0
    for batch in split_runs(rng, items, max_batch):
        if isinstance(batch[0], Order):
            res = run(store.apply_batch(batch))
            for o, f in zip(batch, res.features, strict=True):
                first.setdefault(o.order_id, f)
        else:
            res = run(store.apply_labels(batch))
        late += len(res.late)
        applied += res.applied
    return first, late, applied


def _run_in_order(make_store: Any, run: Any, kind: str, p: dict[str, Any]) -> None:
    rng = random.Random(p["seed"])
    orders = make_orders(rng, SIZES[kind], span_s=p["span_s"], burst=p["burst"])
    labels = make_labels(rng, orders)
    inorder = sorted(orders, key=lambda o: (to_us(o), o.order_id))
    store = make_store(FS, p["lateness_s"])
    online, late, _ = drive(store, run, interleave(inorder, labels), rng, p["max_batch"])
    assert late == 0
    rep = replay(FS, inorder, labels).rows()
    for o, r in zip(inorder, rep, strict=True):
        expected = oracle(FS, orders, labels, o)
        assert online[o.order_id] == expected, o.order_id
        assert r == expected, o.order_id


def _run_shuffled(make_store: Any, run: Any, kind: str, p: dict[str, Any]) -> None:
    rng = random.Random(p["seed"])
    lateness = p["lateness_s"]
    orders = make_orders(rng, SIZES[kind], span_s=p["span_s"], burst=p["burst"])
    last = max(to_us(o) for o in orders)
    # the final reads happen "now", at the last order: no label from after that has arrived yet
    labels = [lb for lb in make_labels(rng, orders) if to_us(lb.label_time) <= last]
    inorder = sorted(orders, key=lambda o: (to_us(o), o.order_id))
    reference = MemoryStore(FS, lateness, use_kernel=False)  # the Python path is the reference
    _, _, applied_ref = drive(reference, run, interleave(inorder, labels), random.Random(1), 50)
    store = make_store(FS, lateness)
    _, late, applied = drive(store, run, arrival_order(rng, orders, labels, lateness), rng, p["max_batch"])
    assert late == 0
    assert applied == applied_ref  # every (entity, event) exactly once, duplicates ignored
    if isinstance(store, MemoryStore):
        assert set(store.states) == set(reference.states)
        for key, blob in reference.states.items():
            ns = reference.layout.namespace_of_key(key)
            assert canonical(decode_state(ns, store.states[key])) == canonical(decode_state(ns, blob)), key
            assert store.states[key] == blob, key  # the packed encoding is canonical: byte-identical
    tail = [o for o in inorder if to_us(o) >= last - lateness * US]
    tail += probes(rng, orders, last - lateness * US, last + 3600 * US, 12)
    got = run(store.read_as_of(tail))
    for o, f in zip(tail, got, strict=True):
        assert f == oracle(FS, orders, labels, o), o.order_id


def _given(kind_examples: int) -> Any:
    # no shrinking: examples are seeds of random streams, which do not shrink meaningfully
    return settings(max_examples=kind_examples, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.mark.parametrize("engine", ["compiled", "python"], indirect=True)
@pytest.mark.parametrize("store_kind", ["memory", "redis", "redis_cluster", "dynamodb"], indirect=True)
def test_in_order_stream_equals_oracle_and_replay(make_store: Any, run: Any, store_kind: str) -> None:
    @_given(EXAMPLES[store_kind])
    @given(p=streams)
    def check(p: dict[str, Any]) -> None:
        _run_in_order(make_store, run, store_kind, p)

    check()


@pytest.mark.parametrize("engine", ["compiled", "python"], indirect=True)
@pytest.mark.parametrize("store_kind", ["memory", "redis", "redis_cluster", "dynamodb"], indirect=True)
def test_shuffled_duplicated_stream_equals_oracle(make_store: Any, run: Any, store_kind: str) -> None:
    @_given(EXAMPLES[store_kind])
    @given(p=streams)
    def check(p: dict[str, Any]) -> None:
        _run_shuffled(make_store, run, store_kind, p)

    check()
