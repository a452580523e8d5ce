"""The labels role: labelled outcomes (with duplicates and a bad event) → label-derived features."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
from streamkit import consumed, labels_for, make_traffic, probe_orders, produce, read_all

from contracts.events import encode
from feature_state.definitions import load_feature_set
from feature_state.stores.memory import MemoryStore
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kafka import ensure_topics
from stream_app.worker import StreamWorker


async def test_labels_update_label_derived_features_once(stream_settings: Any) -> None:
    settings = stream_settings()
    await ensure_topics(settings.kafka)
    traffic = make_traffic(600, seed=31, duplicate_rate=0, reorder_window_s=0, customers=40)
    labels = labels_for(traffic.orders, every=3)
    records: list[tuple[bytes | None, bytes]] = [(lb.order_id.encode(), encode(lb)) for lb in labels]
    records += records[:20]  # redelivered labels change nothing
    records.append((b"x", msgspec.json.encode({"order_id": "x", "label": "maybe"})))
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    await produce(bs, t.labels, records)

    # then, in a later batch: a fraud label far behind its customer's watermark (late: dead-lettered, not
    # applied, never silently dropped) and a good redelivery after it
    first = min(labels, key=lambda lb: lb.label_time)
    too_late = msgspec.structs.replace(first, order_id="late-label-1",
                                       label_time=first.label_time - dt.timedelta(days=30))
    later: list[tuple[bytes | None, bytes]] = [(b"late-label-1", encode(too_late)), records[0]]

    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("labels",))
    task = asyncio.create_task(worker.run())

    try:
        await consumed(worker, task, "labels", len(records))
        await produce(bs, t.labels, later)
        await consumed(worker, task, "labels", len(records) + len(later))
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)
    assert worker.stats.labels == len(records) - 1 + 1  # the bad one and the late one are not applied

    letters = [decode_dead_letter(r.value) for r in await read_all(bs, t.dead_letters, expect_at_least=2)]
    # (the dead-letter topic has several partitions: no order between the two)
    assert sorted((dl.stage, dl.topic) for dl in letters) == [("decode", t.labels), ("late", t.labels)]
    late = next(dl for dl in letters if dl.stage == "late")
    assert late.key == "late-label-1" and "allowed lateness" in late.error

    oracle = MemoryStore(load_feature_set(None), allowed_lateness_s=10**9)
    await oracle.apply_labels(labels)
    at = max(lb.label_time for lb in labels) + dt.timedelta(days=3)
    probes = probe_orders(traffic.orders[:40], at)
    got, want = await parts.store.read_as_of(probes), await oracle.read_as_of(probes)
    label_features = [f.name for f in load_feature_set(None).aggregates if f.source == "labels"]
    assert label_features
    assert [{n: g[n] for n in label_features} for g in got] == [{n: w[n] for n in label_features} for w in want]
    assert any(g["customer_fraud_count_90d"] for g in got), "the labels did reach the features"
