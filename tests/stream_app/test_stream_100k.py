"""The issue's acceptance run: 100,000 orders with 5 % duplicates, reordering within the lateness and
injected bad events, through one worker on the real broker, with the embedded feature store (the
Redis store applies ~200–300 orders/s on this machine today, so 100,000 orders on Redis would take
~6–8 minutes: the Redis runs are the worker-process tests in test_stream_worker_crash.py).

Checks: exactly one unmarked decision per order_id (repeats marked), one action per non-allow
decision, the dead-letter topic holds exactly the injected bad events (card numbers masked), and
the customer and card aggregates of a sample of customers equal an oracle store fed only those
customers' orders (cards belong to one customer in this traffic, so the subset is complete).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from streamkit import make_traffic, probe_orders, produce, read_all
from test_stream_orders_e2e import check_dead_letters, check_effects, run_until

from feature_state.definitions import load_feature_set
from feature_state.stores.memory import MemoryStore
from fraudscore.assemble import build_parts
from stream_app.kafka import ensure_topics
from stream_app.worker import StreamWorker


# ~100 s of pipeline work alone on the 2-core CI machine (the embedded store applies ~1,000 orders/s);
# more than the suite's default 300 s per test when the machine is shared.
@pytest.mark.timeout(900)
async def test_100k_orders_duplicates_reordering_bad_events(stream_settings: Any) -> None:
    settings = stream_settings(**{"stream.max_batch": 2000})
    await ensure_topics(settings.kafka)
    traffic = make_traffic(100_000, seed=100, customers=20_000, duplicate_rate=0.05, reorder_window_s=120,
                           bad_every=1000, rate_per_s=50)
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    await produce(bs, t.orders, traffic.emitted)
    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("orders",))
    await run_until(worker, lambda: bool(worker.consumers)
                    and worker.consumers["orders"].stats.events >= len(traffic.emitted), timeout_s=800)
    st = worker.consumers["orders"].stats
    assert (st.events, st.dead_letters, st.duplicates) == (len(traffic.emitted), len(traffic.bad),
                                                           len(traffic.duplicates))
    check_effects(traffic, await read_all(bs, t.decisions, expect_at_least=len(traffic.orders), idle_s=1.0),
                  await read_all(bs, t.actions, idle_s=1.0))
    check_dead_letters(traffic, await read_all(bs, t.dead_letters, expect_at_least=len(traffic.bad)), t.orders)

    sample = {f"c{i}" for i in range(0, 20_000, 200)}
    mine = [o for o in traffic.orders if o.customer_id in sample]
    oracle = MemoryStore(load_feature_set(None), allowed_lateness_s=10**9)
    await oracle.apply_and_read(sorted(mine, key=lambda o: o.event_time))
    at = max(o.event_time for o in traffic.orders) + dt.timedelta(seconds=1)
    probes = probe_orders(mine, at)
    got, want = await parts.store.read_as_of(probes), await oracle.read_as_of(probes)
    names = [n for n in got[0] if n.startswith(("customer_", "card_"))]
    assert names
    assert [{n: g[n] for n in names} for g in got] == [{n: w[n] for n in names} for w in want]
