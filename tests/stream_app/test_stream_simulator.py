"""The platform's own simulator → Kafka → worker: its ground truth (duplicates, malformed events)
matches what the worker marked and dead-lettered, event for event."""

from __future__ import annotations

import asyncio
import base64
from collections import Counter
from typing import Any

import msgspec
from streamkit import consumed, read_all

from contracts.events import Decision
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kafka import ensure_topics
from stream_app.processor import DUPLICATE_HEADER
from stream_app.worker import StreamWorker
from training.simulator.config import SimulationConfig
from training.simulator.generator import simulate
from training.simulator.records import TruthRecord
from training.simulator.sinks.kafka import KafkaTarget, send_to_kafka


def b64(hex_digest: str) -> str:
    return base64.urlsafe_b64encode(bytes.fromhex(hex_digest)).rstrip(b"=").decode()


async def test_simulated_traffic_truth_matches_marks_and_dead_letters(stream_settings: Any) -> None:
    settings = stream_settings()
    await ensure_topics(settings.kafka)
    # ~4,000 orders over 40 minutes of event time: the whole stream fits in the allowed lateness, so
    # however far one partition runs ahead of another while the backlog is consumed, nothing is late.
    config = SimulationConfig(seed=17, days=40 / 1440, orders_per_day=144_000, customers=20_000,
                              duplicate_rate=0.05, reorder_window_s=300, bad_rate=0.01, labels="none")
    events = list(simulate(config, workers=1))
    truth = [msgspec.json.decode(e.value, type=TruthRecord) for e in events if e.stream == "truth"]
    good = {e.key for e in events if e.stream == "orders" and e.kind == "order"}
    n_orders = sum(1 for e in events if e.stream == "orders")
    await send_to_kafka([e for e in events if e.stream == "orders"],
                        KafkaTarget.from_settings(settings.kafka, create_topics=False))

    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("orders",))
    task = asyncio.create_task(worker.run())
    try:
        await consumed(worker, task, "orders", n_orders)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)

    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    duplicates = [r for r in truth if r.kind == "duplicate"]
    bad = [r for r in truth if r.kind == "bad"]
    assert duplicates and bad and good
    reads = await read_all(bs, t.decisions, expect_at_least=n_orders - len(bad), idle_s=1.0)
    unmarked = Counter(msgspec.json.decode(r.value, type=Decision).order_id for r in reads
                       if r.headers.get(DUPLICATE_HEADER) != b"1")
    marked = Counter(msgspec.json.decode(r.value, type=Decision).order_id for r in reads
                     if r.headers.get(DUPLICATE_HEADER) == b"1")
    assert max(unmarked.values()) == 1
    assert len(unmarked) == n_orders - len(bad) - len(duplicates), (len(reads), worker.consumers["orders"].stats)
    assert marked == Counter(r.order_id for r in duplicates), "exactly the simulator's duplicates are marked"
    letters = [decode_dead_letter(r.value) for r in await read_all(bs, t.dead_letters, expect_at_least=len(bad))]
    assert len(letters) == len(bad)
    masked = [dl for dl in letters if dl.masked]
    assert len(masked) == sum(1 for r in bad if r.defect == "pan_in_field")
    assert {dl.payload_sha256 for dl in letters if not dl.masked} == {
        b64(r.sha256) for r in bad if r.defect != "pan_in_field" and r.sha256}
