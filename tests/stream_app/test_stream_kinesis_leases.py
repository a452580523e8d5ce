"""Kinesis on moto (over HTTP): checkpoints survive a restart, a worker that joins gets a fair share
of the shards, and a surviving worker takes leases over.

Leases and checkpoints live in DynamoDB (moto) and are read back here through boto3. The feature
store and the decision ledger are Redis, shared by every worker as in production, so a repeat is
marked (``"duplicate": true``) whichever worker publishes it.

* Restart: a worker stopped mid-stream, then a new worker built from the same settings. The new
  one reads exactly the records after the checkpoints the first left in DynamoDB.
* Rebalance: a worker owns every shard; a second worker of the same application starts, announces
  itself with a heartbeat item, and the first releases its surplus between batches: each ends up
  with two of the four shards, taken over from the checkpoints.
* Takeover: a worker owned every shard and a second worker of the same application joined (so
  it holds a share, or is about to). The first stops gracefully (it releases its leases), is paused
  with SIGSTOP (it stops renewing; when it resumes it must not move a checkpoint), or is killed -9.
  The survivor takes over every shard from the other's checkpoints.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import msgspec
import pytest
from streamkit import Traffic, make_traffic
from test_stream_kinesis_e2e import put, read_records

from contracts.config import Settings
from contracts.events import Decision
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.sinks import is_marked_duplicate
from stream_app.worker import StreamWorker
from tests.services import MotoServer, free_port

ROOT = Path(__file__).resolve().parents[2]
MAX_BATCH = 40  # records per poll across the owned shards: a stop lands mid-stream, and a replay is small
LEASE_S = 3.0


def lease_table(settings: Settings, dynamodb: Any) -> dict[str, dict[str, str | None]]:
    """The shard leases of the orders stream, read from DynamoDB: shard id → owner and checkpoint."""
    prefix = f"{settings.kafka.consumer_group}:{settings.stream.kinesis_stream}:"
    out: dict[str, dict[str, str | None]] = {}
    kwargs: dict[str, Any] = {"TableName": settings.stream.kinesis_checkpoint_table, "ConsistentRead": True}
    while True:
        resp = dynamodb.scan(**kwargs)
        for item in resp["Items"]:
            key = item["lease_key"]["S"]
            if key.startswith(prefix):
                out[key[len(prefix):]] = {"owner": item.get("owner", {}).get("S"),
                                          "checkpoint": item.get("checkpoint", {}).get("S")}
        if "LastEvaluatedKey" not in resp:
            return out
        kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


@dataclass
class Rig:
    """The streams, the lease table and the clients of one test."""

    settings: Settings
    kinesis: Any
    dynamodb: Any
    redis_url: str

    @property
    def stream(self) -> str:
        return self.settings.stream.kinesis_stream

    def leases(self) -> dict[str, dict[str, str | None]]:
        """The lease table as DynamoDB holds it: shard id → owner and checkpoint."""
        return lease_table(self.settings, self.dynamodb)

    def owners(self) -> Counter[str | None]:
        """How many shards each worker holds in the lease table."""
        return Counter(lease["owner"] for lease in self.leases().values())

    def sequences(self) -> dict[str, list[int]]:
        """Every sequence number of every shard of the orders stream, in order."""
        out: dict[str, list[int]] = {}
        for shard in self.kinesis.list_shards(StreamName=self.stream)["Shards"]:
            it = self.kinesis.get_shard_iterator(StreamName=self.stream, ShardId=shard["ShardId"],
                                                 ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            seqs: list[int] = []
            empty = 0
            while it and empty < 3:
                resp = self.kinesis.get_records(ShardIterator=it, Limit=1000)
                seqs.extend(int(r["SequenceNumber"]) for r in resp["Records"])
                empty = 0 if resp["Records"] else empty + 1
                it = resp.get("NextShardIterator")
            out[shard["ShardId"]] = seqs
        return out

    def caught_up(self, seqs: dict[str, list[int]]) -> bool:
        """Every shard checkpointed at its last record."""
        leases = self.leases()
        return all(sid in leases and leases[sid]["checkpoint"] == str(s[-1]) for sid, s in seqs.items() if s)

    def decisions(self) -> tuple[Counter[str], Counter[str]]:
        """(unmarked, marked) decisions per order id on the decisions stream."""
        unmarked: Counter[str] = Counter()
        marked: Counter[str] = Counter()
        for key, data in read_records(self.kinesis, self.settings.kafka.topics.decisions):
            d = msgspec.json.decode(data, type=Decision)
            assert key == d.order_id
            (marked if is_marked_duplicate(data) else unmarked)[d.order_id] += 1
        return unmarked, marked

    def dead_letter_positions(self) -> set[tuple[str, str]]:
        letters = [decode_dead_letter(data) for _, data in read_records(self.kinesis,
                                                                         self.settings.kafka.topics.dead_letters)]
        assert all(dl.source == "kinesis" for dl in letters)
        return {(str(dl.partition), str(dl.offset)) for dl in letters}


@pytest.fixture
def rig(stream_settings: Any, moto_server: MotoServer, redis_url: str, unique: str) -> Rig:
    endpoint = moto_server.endpoint_url
    settings: Settings = stream_settings(**{
        "stream.source": "kinesis",
        "stream.kinesis_endpoint_url": endpoint,
        "stream.kinesis_stream": f"orders-{unique}",
        "stream.kinesis_checkpoint_table": f"leases-{unique}",
        "stream.kinesis_lease_s": LEASE_S,
        "stream.kinesis_poll_interval_ms": 50,
        "stream.max_batch": MAX_BATCH,
        "feature_store.type": "redis",
        "feature_store.redis_url": redis_url,
    })
    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=endpoint)
    t = settings.kafka.topics
    names = (settings.stream.kinesis_stream, t.decisions, t.actions, t.dead_letters)
    for name, shards in zip(names, (4, 2, 1, 1), strict=True):
        client.create_stream(StreamName=name, ShardCount=shards)
    for name in names:
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    return Rig(settings, client, boto3.client("dynamodb", region_name="us-east-1", endpoint_url=endpoint), redis_url)


class Run:
    """An in-process worker built from the settings alone (its own store, ledger and clients);
    ``start()`` runs it (building is the slow part, so a test can build a worker ahead)."""

    def __init__(self, settings: Settings) -> None:
        self.parts = build_parts(settings)
        self.worker = StreamWorker(settings, self.parts.pipeline, self.parts.store, roles=("orders",))
        self.task: asyncio.Task[None] | None = None
        self.stopped = False

    def start(self) -> Run:
        self.task = asyncio.create_task(self.worker.run())
        return self

    @property
    def events(self) -> int:
        c = self.worker.consumers.get("orders")
        return c.stats.events if c is not None else 0

    @property
    def worker_id(self) -> str:
        return str(self.worker.consumers["orders"].worker_id)  # type: ignore[attr-defined]

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.worker.stop()
        try:
            if self.task is not None:
                await asyncio.wait_for(self.task, 60)
        finally:
            await self.parts.store.close()


async def until(cond: Callable[[], Any], what: str, *, runs: tuple[Run, ...] = (),
                procs: tuple[subprocess.Popen[bytes], ...] = (), log: Path | None = None,
                timeout_s: float = 60.0) -> None:
    """Poll ``cond()`` until true; fail at the deadline, or as soon as a worker dies."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        for r in runs:
            if r.task is not None and r.task.done():
                r.task.result()
                raise AssertionError(f"a worker stopped while waiting for {what}")
        for p in procs:
            assert p.poll() is None, f"worker process exited ({p.returncode}):\n{tail(log)}"
        assert loop.time() < deadline, f"timed out waiting for {what}:\n{tail(log)}"
        await asyncio.sleep(0.1)


def tail(log: Path | None) -> str:
    return log.read_text()[-3000:] if log is not None and log.exists() else ""


def check_decided_once(rig: Rig, traffic: Traffic, *, exactly_once: bool = True) -> Counter[str]:
    """Every order has an unmarked decision (exactly one, unless told otherwise) and every source
    repeat is marked; returns the marked repeats beyond the source's own duplicates (replays)."""
    unmarked, marked = rig.decisions()
    assert set(unmarked) == traffic.order_ids, (len(traffic.order_ids - set(unmarked)), "orders without one")
    if exactly_once:
        assert max(unmarked.values()) == 1, "exactly one unmarked decision per order_id"
    assert set(marked) <= traffic.order_ids
    dups = Counter(traffic.duplicates)
    assert not dups - marked, "every repeat in the source is published marked"
    return marked - dups


# ---------------------------------------------------------------------------------------------- restart

async def test_a_new_worker_resumes_after_the_checkpoints_of_a_stopped_one(rig: Rig) -> None:
    traffic = make_traffic(600, seed=31, bad_every=60, duplicate_rate=0.05)
    put(rig.kinesis, rig.stream, traffic.emitted)
    total = len(traffic.emitted)
    seqs = rig.sequences()
    assert sum(len(s) for s in seqs.values()) == total and all(seqs.values())

    first = Run(rig.settings).start()
    try:
        await until(lambda: first.events >= total // 2, "the first worker to consume half", runs=(first,))
    finally:
        await first.stop()  # graceful: the batch in flight is finished and checkpointed, leases released
    assert first.events < total, "the first worker was stopped mid-stream"

    # The checkpoints as DynamoDB holds them: released, and covering exactly what the first worker took.
    leases = rig.leases()
    assert set(leases) == set(seqs)
    assert all(lease["owner"] is None for lease in leases.values()), "leases released on a graceful stop"
    at = {sid: int(lease["checkpoint"] or -1) for sid, lease in leases.items()}
    checkpointed = {sid: sum(1 for q in seqs[sid] if q <= at[sid]) for sid in seqs}
    assert sum(checkpointed.values()) == first.events, (checkpointed, first.events)
    assert any(checkpointed[sid] < len(seqs[sid]) for sid in seqs), "records left after the checkpoints"

    second = Run(rig.settings).start()  # a new worker (new id, store, ledger client) with the same settings
    try:
        await until(lambda: rig.caught_up(seqs), "the second worker to checkpoint every shard's last record",
                    runs=(second,))
        assert sorted(second.worker.consumers["orders"].stats.assigned) == sorted(seqs)
    finally:
        await second.stop()

    # It read exactly the records after the checkpoints: none again, none skipped.
    assert second.events == total - first.events == sum(len(seqs[s]) - checkpointed[s] for s in seqs)
    replays = check_decided_once(rig, traffic)
    assert not replays, f"nothing replayed across a graceful restart: {sum(replays.values())} extra repeats"
    assert len(rig.dead_letter_positions()) == len(traffic.bad)
    assert all(lease["owner"] is None for lease in rig.leases().values())


# ---------------------------------------------------------------------------------------------- takeover

async def test_the_survivor_takes_over_the_leases_of_a_worker_stopped_gracefully(rig: Rig) -> None:
    traffic = make_traffic(800, seed=32, bad_every=80, duplicate_rate=0.05)
    first_part = len(traffic.emitted) * 2 // 3
    put(rig.kinesis, rig.stream, traffic.emitted[:first_part])
    shards = sorted(rig.sequences())

    a = Run(rig.settings).start()
    b = Run(rig.settings)
    try:
        await until(lambda: a.events >= 100, "worker A to consume", runs=(a,))
        assert {lease["owner"] for lease in rig.leases().values()} == {a.worker_id}, "A owns every shard"
        b.start()  # B joins: A may release half of the shards to it before it stops
        await asyncio.wait_for(b.worker.ready.wait(), 30)
        await a.stop()  # finishes and checkpoints its batch in flight, releases its leases
        put(rig.kinesis, rig.stream, traffic.emitted[first_part:])
        await until(lambda: {sid: lease["owner"] for sid, lease in rig.leases().items()}
                    == dict.fromkeys(shards, b.worker_id), "worker B to own every shard", runs=(b,))
        seqs = rig.sequences()
        await until(lambda: rig.caught_up(seqs), "worker B to checkpoint every shard's last record", runs=(b,))
        assert sorted(b.worker.consumers["orders"].stats.assigned) == shards
    finally:
        await a.stop()
        await b.stop()

    assert b.events > 0 and a.events + b.events == len(traffic.emitted), \
        "B started at A's checkpoints: every record read once across the hand-over(s)"
    replays = check_decided_once(rig, traffic)
    assert not replays, f"a graceful hand-over replays nothing: {sum(replays.values())} extra repeats"
    assert len(rig.dead_letter_positions()) == len(traffic.bad)
    assert all(lease["owner"] is None for lease in rig.leases().values())


# ---------------------------------------------------------------------------------------------- rebalance

async def test_a_worker_that_joins_gets_a_fair_share_of_the_shards(rig: Rig) -> None:
    """A owns all four shards; B starts; within a few lease intervals each holds two (read from the
    lease table), the stream goes on, every order is decided exactly once unmarked, and the moves
    replay at most one batch per moved shard (a release happens between batches, after the checkpoint)."""
    traffic = make_traffic(900, seed=34, bad_every=90, duplicate_rate=0.05)
    first_part = len(traffic.emitted) // 2
    put(rig.kinesis, rig.stream, traffic.emitted[:first_part])
    shards = sorted(rig.sequences())
    assert len(shards) == 4

    a = Run(rig.settings).start()
    b = Run(rig.settings)  # built ahead
    try:
        await until(lambda: a.events >= 100, "worker A to consume", runs=(a,))
        assert rig.owners() == {a.worker_id: 4}, "A alone owns every shard"
        b.start()
        await asyncio.wait_for(b.worker.ready.wait(), 30)
        await until(lambda: rig.owners() == {a.worker_id: 2, b.worker_id: 2}, "A and B to own two shards each",
                    runs=(a, b), timeout_s=5 * LEASE_S)
        split = {sid: lease["owner"] for sid, lease in rig.leases().items()}
        put(rig.kinesis, rig.stream, traffic.emitted[first_part:])
        seqs = rig.sequences()
        await until(lambda: rig.caught_up(seqs), "every shard checkpointed at its last record", runs=(a, b))
        assert {sid: lease["owner"] for sid, lease in rig.leases().items()} == split, "no thrash: the split held"
        assert sorted(a.worker.consumers["orders"].stats.assigned) == sorted(s for s, o in split.items()
                                                                               if o == a.worker_id)
        assert sorted(b.worker.consumers["orders"].stats.assigned) == sorted(s for s, o in split.items()
                                                                               if o == b.worker_id)
    finally:
        await a.stop()
        await b.stop()

    assert b.events > 0
    replays = check_decided_once(rig, traffic)
    assert sum(replays.values()) <= 2 * MAX_BATCH, f"at most one batch per moved shard: {replays}"
    assert a.events + b.events <= len(traffic.emitted) + 2 * MAX_BATCH
    assert len(rig.dead_letter_positions()) == len(traffic.bad)
    assert all(lease["owner"] is None for lease in rig.leases().values()), "leases released on a graceful stop"
    workers = rig.dynamodb.scan(TableName=rig.settings.stream.kinesis_checkpoint_table, ConsistentRead=True)["Items"]
    assert not [i for i in workers if "#worker:" in i["lease_key"]["S"]], "heartbeats deleted on a graceful stop"


def start_process_worker(rig: Rig, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``fraudscore worker --role orders`` on Kinesis (no Kafka) with the test's settings."""
    s = rig.settings
    t = s.kafka.topics
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDSCORE", "KAFKA", "REDIS"))}
    env.update({
        "PYTHONPATH": str(ROOT), "FRAUDSCORE_DATA_DIR": str(s.data_dir), "FRAUDSCORE_METRICS_PORT": str(port),
        "FRAUDSCORE__KAFKA__EMBEDDED_PORT": str(free_port()),  # nothing listens there: no Kafka is used
        "FRAUDSCORE__KAFKA__CONSUMER_GROUP": s.kafka.consumer_group,
        "FRAUDSCORE__STREAM__SOURCE": "kinesis",
        "FRAUDSCORE__STREAM__KINESIS_ENDPOINT_URL": s.stream.kinesis_endpoint_url or "",
        "FRAUDSCORE__STREAM__KINESIS_STREAM": s.stream.kinesis_stream,
        "FRAUDSCORE__STREAM__KINESIS_CHECKPOINT_TABLE": s.stream.kinesis_checkpoint_table,
        "FRAUDSCORE__STREAM__KINESIS_LEASE_S": str(s.stream.kinesis_lease_s),
        "FRAUDSCORE__STREAM__KINESIS_POLL_INTERVAL_MS": str(s.stream.kinesis_poll_interval_ms),
        "FRAUDSCORE__STREAM__MAX_BATCH": str(s.stream.max_batch),
        "FRAUDSCORE__FEATURE_STORE__TYPE": "redis", "REDIS_URL": rig.redis_url,
        "FRAUDSCORE__KAFKA__TOPICS__DECISIONS": t.decisions,
        "FRAUDSCORE__KAFKA__TOPICS__ACTIONS": t.actions,
        "FRAUDSCORE__KAFKA__TOPICS__DEAD_LETTERS": t.dead_letters,
    })
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fraudscore", "worker", "--role", "orders"], env=env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return proc, port


def health(port: int) -> dict[str, Any]:
    """The process worker's /healthz detail ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            body = r.read()
    except urllib.error.HTTPError as exc:  # 503 while starting: the detail is still there
        body = exc.read()
    except OSError:
        return {}
    data: dict[str, Any] = json.loads(body)
    return data


def owner_pid(owner: str | None) -> int | None:
    """The process id inside a worker id (``<host>-<pid>-<random>``)."""
    return int(owner.rsplit("-", 2)[1]) if owner else None


@pytest.mark.parametrize("how", ["paused", "killed"])
async def test_the_survivor_takes_over_the_leases_of_a_worker_that_stops_renewing(
    rig: Rig, how: str, tmp_path: Path
) -> None:
    """A is a real ``fraudscore worker`` process that owned every shard, B joined and got its share;
    then A is stopped mid-stream. ``paused``: SIGSTOP (it holds its leases and its heartbeat and stops
    renewing); the survivor takes its shards over once they expire; then SIGCONT: the resumed worker
    must drop its shards without moving a checkpoint, rejoins and gets its share back from the
    checkpoints, and exits cleanly on SIGTERM. ``killed``: SIGKILL, no clean-up at all."""
    traffic = make_traffic(1200, seed=33, bad_every=80, duplicate_rate=0.05)
    first_part = len(traffic.emitted) * 2 // 3
    put(rig.kinesis, rig.stream, traffic.emitted[:first_part])
    shards = sorted(rig.sequences())
    b = Run(rig.settings)  # built ahead, started once A owns every shard
    log = tmp_path / "worker-a.log"
    a, port = start_process_worker(rig, log)
    try:
        await until(lambda: health(port).get("orders", {}).get("events", 0) >= 150, "process A to consume",
                    procs=(a,), log=log)
        assert {owner_pid(lease["owner"]) for lease in rig.leases().values()} == {a.pid}, "A owns every shard"
        b.start()
        await asyncio.wait_for(b.worker.ready.wait(), 30)
        await until(lambda: sorted(Counter(owner_pid(o) for o in rig.owners().elements()).values()) == [2, 2]
                    and rig.owners()[b.worker_id] == 2, "A to hand two shards to B", runs=(b,), procs=(a,),
                    log=log, timeout_s=5 * LEASE_S)
        a_shards = sorted(sid for sid, lease in rig.leases().items() if owner_pid(lease["owner"]) == a.pid)
        a.send_signal(signal.SIGSTOP if how == "paused" else signal.SIGKILL)
        if how == "killed":
            assert a.wait(10) == -signal.SIGKILL
            # A's last checkpoints: nobody else may write them before its leases expire
            left = rig.leases()
            assert sorted(sid for sid, lease in left.items() if owner_pid(lease["owner"]) == a.pid) == a_shards
        await until(lambda: {sid: lease["owner"] for sid, lease in rig.leases().items()}
                    == dict.fromkeys(shards, b.worker_id), "worker B to take every shard over", runs=(b,),
                    log=log)
        first_seqs = rig.sequences()
        await until(lambda: rig.caught_up(first_seqs), "worker B to finish A's shards", runs=(b,), log=log)
        if how == "paused":
            # B is idle and its checkpoints are final for now; A resumes in the middle of what it was
            # doing, finds out at its next checkpoint or renewal that the shards are gone, and drops them
            # (it logs "lost the lease" or "lost … before checkpointing"). It then rejoins with a fresh heartbeat, B
            # releases two shards between batches, and A takes them from B's checkpoints.
            before = {sid: lease["checkpoint"] for sid, lease in rig.leases().items()}
            a.send_signal(signal.SIGCONT)
            await until(lambda: "lost the lease" in log.read_text() or " before checkpointing" in log.read_text(),
                        "the resumed worker A to drop its shards", runs=(b,), procs=(a,), log=log)
            await until(lambda: sorted(Counter(owner_pid(o) for o in rig.owners().elements()).values()) == [2, 2]
                        and rig.owners()[b.worker_id] == 2, "the resumed A to get its share back", runs=(b,),
                        procs=(a,), log=log, timeout_s=5 * LEASE_S)
            assert {sid: lease["checkpoint"] for sid, lease in rig.leases().items()} == before, \
                "the resumed worker moved no checkpoint"
        put(rig.kinesis, rig.stream, traffic.emitted[first_part:])
        seqs = rig.sequences()
        await until(lambda: rig.caught_up(seqs), "every shard's last record checkpointed", runs=(b,),
                    procs=(a,) if how == "paused" else (), log=log)
        if how == "paused":
            assert rig.owners()[b.worker_id] == 2, "A and B share the shards"
        else:
            assert {sid: lease["owner"] for sid, lease in rig.leases().items()} == dict.fromkeys(shards, b.worker_id)
        if how == "paused":
            a.send_signal(signal.SIGTERM)
            assert a.wait(60) == 0, tail(log)
    finally:
        if a.poll() is None:
            a.send_signal(signal.SIGCONT)
            a.kill()
            a.wait(10)
        await b.stop()

    unmarked, marked = rig.decisions()
    assert set(unmarked) == traffic.order_ids, "every order has an unmarked decision"
    # The batch A had claimed but not confirmed when it stopped is republished unmarked by B (a claim
    # pending at the same record position is the same record again). If A's publish had reached the
    # stream first (killed after it, or paused and then resumed mid-batch), those orders have two
    # unmarked decisions: at most that one batch (docs/stream_app.md, the ledger's two phases).
    assert max(unmarked.values()) <= 2, max(unmarked.values())
    assert sum(1 for n in unmarked.values() if n > 1) <= MAX_BATCH
    if how == "paused":
        replays = check_decided_once(rig, traffic, exactly_once=False)
        # B replays from A's last checkpoint: at most A's batch in flight when it stopped, plus the one
        # batch the resumed A may finish before it learns it lost its leases; not the whole shard
        # (the graceful moves between A and B, before and after, replay nothing).
        assert sum(replays.values()) <= 2 * MAX_BATCH, replays
    else:
        # B took A's shards from the checkpoints A left in DynamoDB: it replays at most A's batch in flight
        assert not Counter(traffic.duplicates) - marked, "every repeat in the source is published marked"
        assert sum((marked - Counter(traffic.duplicates)).values()) <= MAX_BATCH, "replayed at most one batch"
    assert len(rig.dead_letter_positions()) == len(traffic.bad), "each bad record dead-lettered (maybe twice)"
    assert rig.caught_up(seqs)
    assert all(lease["owner"] is None for lease in rig.leases().values()), "B released its leases on stop"
