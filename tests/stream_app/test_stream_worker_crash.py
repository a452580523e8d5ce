"""``fraudscore worker`` processes: kill -9 mid-run, restart → every order decided, nothing lost.

With a shared durable store (Redis, once available) the final aggregates are compared with the
oracle too; with the embedded store the state lives in the killed process, so only the effects
(decisions, actions, dead letters) are compared.
"""

from __future__ import annotations

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
from streamkit import make_traffic, produce, read_all, sha

from contracts.config import Settings
from contracts.events import Decision
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
        "PYTHONPATH": str(ROOT),
    })
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


async def test_kill_9_mid_run_then_restart(stream_settings: Any, tmp_path: Path) -> None:
    settings: Settings = stream_settings()
    await ensure_topics(settings.kafka)
    bs, t = settings.kafka.bootstrap or "", settings.kafka.topics
    traffic = make_traffic(10_000, seed=9, bad_every=400)
    await produce(bs, t.orders, traffic.emitted)
    log = tmp_path / "worker.log"
    first, port = start_worker(settings, log)
    try:
        wait_orders(first, port, 3000, log)
        first.send_signal(signal.SIGKILL)  # no commit of the batch in flight, no leaving the group
        first.wait(10)
        second, port2 = start_worker(settings, log)
        try:
            deadline = time.monotonic() + 240
            decided: set[str] = set()
            while time.monotonic() < deadline:
                reads = await read_all(bs, t.decisions, idle_s=0.5, timeout_s=20)
                decided = {msgspec.json.decode(r.value, type=Decision).order_id for r in reads}
                if decided >= traffic.order_ids:
                    break
                assert second.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            second.send_signal(signal.SIGTERM)  # graceful: finishes and commits its last batch
            assert second.wait(60) == 0, log.read_text()[-3000:]
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
    reads = await read_all(bs, t.decisions, idle_s=1.0)
    per_id = Counter(msgspec.json.decode(r.value, type=Decision).order_id for r in reads)
    assert set(per_id) == traffic.order_ids, "every valid order decided, and nothing else"
    marked = sum(1 for r in reads if r.headers.get(DUPLICATE_HEADER) == b"1")
    # Repeats are the injected duplicates plus at most the batches in flight at the kill
    # (replayed by the restarted worker, whose in-process ledger cannot know them: unmarked).
    assert len(reads) - len(per_id) <= len(traffic.duplicates) + 4 * 300
    assert marked <= len(reads) - len(per_id)
    letters = [decode_dead_letter(r.value) for r in await read_all(bs, t.dead_letters)]
    positions = {(dl.partition, dl.offset) for dl in letters}
    assert len(positions) == len(traffic.bad), "each injected bad event dead-lettered (replays may repeat one)"
    by_sha = {sha(raw) for _, raw in traffic.bad}
    assert all(dl.masked or dl.payload_sha256 in by_sha for dl in letters)
