"""``fraudscore worker`` processes on the real broker and Redis (store and decision ledger):

* kill -9 mid-run, then a restart → every order decided with an unmarked decision (two, for at
  most the batch in flight at the kill, when the broker had taken its publish), each bad event
  dead-lettered, and the aggregates (read from Redis by another client) equal the
  oracle's;
* two workers, one added and one removed mid-run → the same, with exactly one unmarked decision
  per order (graceful rebalances replay nothing).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
from streamkit import make_traffic, probe_orders, produce, read_all, sha

from contracts.config import Settings
from contracts.events import Decision
from feature_state.definitions import load_feature_set
from feature_state.stores.memory import MemoryStore
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kafka import ensure_topics
from stream_app.processor import DUPLICATE_HEADER
from tests.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def worker_env(settings: Settings, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDSCORE")}
    t = settings.kafka.topics
    env.update({
        "KAFKA_BOOTSTRAP": settings.kafka.bootstrap or "",
        "FRAUDSCORE_DATA_DIR": str(settings.data_dir),
        "FRAUDSCORE_METRICS_PORT": str(port),
        "FRAUDSCORE__KAFKA__CONSUMER_GROUP": settings.kafka.consumer_group,
        "FRAUDSCORE__KAFKA__PARTITIONS": str(settings.kafka.partitions),
        "FRAUDSCORE__STREAM__SESSION_TIMEOUT_MS": "6000",
        "FRAUDSCORE__STREAM__HEARTBEAT_INTERVAL_MS": "1000",
        "FRAUDSCORE__STREAM__MAX_BATCH": "300",
        "FRAUDSCORE__FEATURE_STORE__TYPE": settings.feature_store.type,
        "PYTHONPATH": str(ROOT),
    })
    if settings.feature_store.redis_url is not None:
        env["REDIS_URL"] = settings.feature_store.redis_url.get_secret_value()
    for name in ("orders", "labels", "decisions", "actions", "dead_letters", "retrain_requests"):
        env[f"FRAUDSCORE__KAFKA__TOPICS__{name.upper()}"] = getattr(t, name)
    return env


def start_worker(settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out = open(log, "ab")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "fraudscore", "worker", "--role", "orders"],
                            env=worker_env(settings, port), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc, port


def tail(log: Path) -> str:
    return log.read_text()[-3000:]


def http_get(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        body: bytes = r.read()
        return body


def stats(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=2) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data
    except OSError:
        return None


def wait_orders(proc: subprocess.Popen[bytes], port: int, at_least: int, log: Path, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        st = stats(port)
        if st and st["orders"] >= at_least:
            return int(st["orders"])
        time.sleep(0.1)
    raise AssertionError(f"worker did not reach {at_least} orders:\n{log.read_text()[-3000:]}")


def decided_ids(reads: list[Any]) -> Counter[str]:
    return Counter(msgspec.json.decode(r.value, type=Decision).order_id for r in reads)


async def wait_all_decided(bs: str, topic: str, ids: set[str], procs: list[subprocess.Popen[bytes]], log: Path,
                           timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if set(decided_ids(await read_all(bs, topic, idle_s=0.3, timeout_s=30))) >= ids:
            return
        for p in procs:
            assert p.poll() is None, tail(log)
        await asyncio.sleep(0.5)
    raise AssertionError(f"not every order was decided in time:\n{tail(log)}")


async def check_final_state(settings: Settings, traffic: Any, *, crashed: bool) -> None:
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    reads = await read_all(bs, t.decisions, idle_s=1.0)
    per_id = decided_ids(reads)
    assert set(per_id) == traffic.order_ids, "every valid order decided, and nothing else"
    unmarked = Counter(msgspec.json.decode(r.value, type=Decision).order_id for r in reads
                       if r.headers.get(DUPLICATE_HEADER) != b"1")
    assert set(unmarked) == traffic.order_ids, "every order has an unmarked decision"
    if crashed:
        # the batch in flight at the kill is republished unmarked; if the broker had already taken
        # its first publish, its orders have two unmarked decisions — at most one batch of them
        twice = [oid for oid, n in unmarked.items() if n > 1]
        assert max(unmarked.values()) <= 2, max(unmarked.values())
        assert len(twice) <= settings.stream.max_batch, len(twice)
    else:
        assert max(unmarked.values()) == 1, "exactly one unmarked decision per order"
    letters = [decode_dead_letter(r.value) for r in await read_all(bs, t.dead_letters)]
    assert len({(dl.partition, dl.offset) for dl in letters}) == len(traffic.bad)
    by_sha = {sha(raw) for _, raw in traffic.bad}
    assert all(dl.masked or dl.payload_sha256 in by_sha for dl in letters)
    # the aggregates, read from Redis by another client, equal the oracle's
    patient = settings.feature_store.model_copy(update={"timeout_ms": 10_000})
    reader = settings.model_copy(update={"feature_store": patient})
    parts = build_parts(reader)
    try:
        at = max(o.event_time for o in traffic.orders) + dt.timedelta(seconds=1)
        probes = probe_orders(traffic.orders[::5], at)
        assert await parts.store.read_as_of(probes) == await oracle_features_for(traffic, probes)
    finally:
        await parts.store.close()


async def oracle_features_for(traffic: Any, probes: list[Any]) -> list[Any]:
    oracle = MemoryStore(load_feature_set(None), allowed_lateness_s=10**9)
    await oracle.apply_and_read(sorted(traffic.orders, key=lambda o: o.event_time))
    return await oracle.read_as_of(probes)


async def test_kill_9_mid_run_then_restart(stream_settings: Any, redis_url: str, tmp_path: Path) -> None:
    settings: Settings = stream_settings(**{"feature_store.type": "redis", "feature_store.redis_url": redis_url})
    await ensure_topics(settings.kafka)
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    traffic = make_traffic(4000, seed=9, bad_every=200)
    await produce(bs, t.orders, traffic.emitted)
    log = tmp_path / "worker.log"
    first, port = start_worker(settings, log)
    second = None
    try:
        wait_orders(first, port, 1000, log)
        first.send_signal(signal.SIGKILL)  # no commit of the batch in flight, no leaving the group
        first.wait(10)
        second, _ = start_worker(settings, log)
        await wait_all_decided(bs, t.decisions, traffic.order_ids, [second], log)
        second.send_signal(signal.SIGTERM)  # graceful: finishes and commits its last batch
        assert second.wait(60) == 0, log.read_text()[-3000:]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
    await check_final_state(settings, traffic, crashed=True)


async def test_workers_added_and_removed_mid_run(stream_settings: Any, redis_url: str, tmp_path: Path) -> None:
    settings: Settings = stream_settings(**{"feature_store.type": "redis", "feature_store.redis_url": redis_url})
    await ensure_topics(settings.kafka)
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    traffic = make_traffic(4000, seed=10, bad_every=200)
    half = len(traffic.emitted) // 2
    await produce(bs, t.orders, traffic.emitted[:half])
    log = tmp_path / "workers.log"
    a, port_a = start_worker(settings, log)
    b = None
    try:
        wait_orders(a, port_a, 800, log)
        b, port_b = start_worker(settings, log)  # added: the group rebalances

        async def until(cond: Any, what: str) -> None:
            deadline = time.monotonic() + 120
            while not cond():
                assert time.monotonic() < deadline, f"{what}:\n{tail(log)}"
                assert b is not None and b.poll() is None and a.poll() is None, tail(log)
                await asyncio.sleep(0.1)

        def b_assigned() -> bool:
            try:
                return bool(json.loads(http_get(port_b, "/healthz")).get("orders", {}).get("assigned"))
            except OSError:
                return False

        await until(b_assigned, "worker B never got partitions")
        await produce(bs, t.orders, traffic.emitted[half:])  # both members share the second half
        await until(lambda: (stats(port_b) or {}).get("orders", 0) >= 100, "worker B decided nothing")
        health = json.loads(http_get(port_b, "/healthz"))
        assert health["status"] == "ok" and health["orders"]["assigned"], health
        prom = http_get(port_b, "/metrics").decode()
        assert "fraudscore_stream_events_total" in prom and "fraudscore_consumer_lag" in prom
        a.send_signal(signal.SIGTERM)  # removed: drains, commits, leaves
        assert a.wait(60) == 0, log.read_text()[-3000:]
        await wait_all_decided(bs, t.decisions, traffic.order_ids, [b], log)
        b.send_signal(signal.SIGTERM)
        assert b.wait(60) == 0, log.read_text()[-3000:]
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
    await check_final_state(settings, traffic, crashed=False)
