"""Kinesis resharding on kinesalite (a local Kinesis API server, over HTTP): a split or a merge while
a worker runs, the closed parent read to its end (GetRecords returns ``NextShardIterator = null``),
checkpointed ``SHARD_END``, and only then its children leased and read.

moto cannot show this (it keeps routing records to a split parent and never ends its iterator, see
test_stream_kinesis_e2e.py); kinesalite closes the parent and routes new records to the children.
The orders, decisions, actions and dead letters are kinesalite streams (the Kinesis sink), the leases
and checkpoints a DynamoDB table on the moto server.

Per-key order across the reshard is read off the decisions stream: it has one shard and the sink
publishes batch after batch, so a decision's position there is the order the worker decided in. For
every partition key (customer) with orders in a parent and in a child, every parent order must come
before every child order.

To make that check bite, the parent still has unread records when its children get theirs: the
test puts a backlog, reshards and puts the rest without yielding to the event loop (the worker runs
on the same loop, so it cannot process a batch meanwhile), checks that the parent's checkpoint is
still before the backlog, and pauses there until the worker's next lease check is due, so that the
first thing the worker does afterwards is list the shards, children included, with the backlog
unread. (A worker that took the children at once fails these tests: tried by removing the parent
check from ``KinesisBatchConsumer._balance``, and the adjacent-parent check for the merge.)
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import boto3
import msgspec
import pytest
from streamkit import Traffic, make_traffic, sha
from test_stream_kinesis_e2e import check_outputs, put, read_records, read_shards
from test_stream_kinesis_leases import Run, lease_table, until

from contracts.config import Settings
from contracts.events import Decision
from stream_app.deadletter import decode_dead_letter
from stream_app.kinesis_checkpoints import SHARD_END
from tests.services import Kinesalite, MotoServer

MAX_BATCH = 40  # records per poll across the owned shards: the backlog below spans many polls
LEASE_S = 3.0  # the worker looks at the shards every second


@dataclass
class Rig:
    """The kinesalite streams, the lease table on moto, and their clients."""

    settings: Settings
    kinesis: Any
    dynamodb: Any

    @property
    def stream(self) -> str:
        return self.settings.stream.kinesis_stream

    def shards(self) -> dict[str, dict[str, Any]]:
        return {s["ShardId"]: s for s in self.kinesis.list_shards(StreamName=self.stream)["Shards"]}

    def checkpoints(self) -> dict[str, str | None]:
        """shard id → checkpoint, as the lease table holds it."""
        return {sid: lease["checkpoint"] for sid, lease in lease_table(self.settings, self.dynamodb).items()}

    def owners(self) -> set[str | None]:
        return {lease["owner"] for lease in lease_table(self.settings, self.dynamodb).values()}

    def wait_active(self) -> None:
        self.kinesis.get_waiter("stream_exists").wait(StreamName=self.stream, WaiterConfig={"Delay": 1})

    def put_backlog(self, records: list[tuple[bytes, bytes]]) -> dict[str, list[int]]:
        """PutRecords (one call); shard id → the sequence numbers the records got there."""
        assert len(records) <= 500
        resp = self.kinesis.put_records(StreamName=self.stream,
                                        Records=[{"Data": v, "PartitionKey": k.decode()} for k, v in records])
        assert resp["FailedRecordCount"] == 0
        out: dict[str, list[int]] = defaultdict(list)
        for r in resp["Records"]:
            out[r["ShardId"]].append(int(r["SequenceNumber"]))
        return out


@pytest.fixture
def rig(stream_settings: Any, kinesalite: Kinesalite, moto_server: MotoServer, unique: str) -> Rig:
    settings: Settings = stream_settings(**{
        "stream.source": "kinesis",
        "stream.kinesis_endpoint_url": kinesalite.endpoint_url,
        "stream.kinesis_checkpoint_endpoint_url": moto_server.endpoint_url,
        "stream.kinesis_stream": f"orders-{unique}",
        "stream.kinesis_checkpoint_table": f"reshard-{unique}",
        "stream.kinesis_lease_s": LEASE_S,
        "stream.kinesis_poll_interval_ms": 50,
        "stream.max_batch": MAX_BATCH,
    })
    client = boto3.client("kinesis", region_name="us-east-1", endpoint_url=kinesalite.endpoint_url)
    t = settings.kafka.topics
    # one shard for the decisions: their order there is the order they were published in
    names = (settings.stream.kinesis_stream, t.decisions, t.actions, t.dead_letters)
    for name, shards in zip(names, (2, 1, 1, 1), strict=True):
        client.create_stream(StreamName=name, ShardCount=shards)
    for name in names:
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1})
    dynamodb = boto3.client("dynamodb", region_name="us-east-1", endpoint_url=moto_server.endpoint_url)
    return Rig(settings, client, dynamodb)


def hash_key(partition_key: bytes) -> int:
    """Where Kinesis puts a record: the MD5 of its partition key as a 128-bit number."""
    return int(hashlib.md5(partition_key).hexdigest(), 16)  # noqa: S324 - Kinesis' hash, not security


def order_id(data: bytes) -> str | None:
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    return doc.get("order_id") if isinstance(doc, dict) else None


def check_parents_first(rig: Rig, traffic: Traffic, parents: set[str], children: set[str]) -> int:
    """Every order read from a parent was decided before any order read from a child: per partition
    key, and over all of them (a child is leased only once all its parents are at SHARD_END).
    Orders whose repeats straddle the reshard (parent and child) are left out. Returns how many keys
    had orders on both sides."""
    where: dict[str, set[str]] = defaultdict(set)
    key_of: dict[str, str] = {}
    for sid, recs in read_shards(rig.kinesis, rig.stream).items():
        for r in recs:
            oid = order_id(r["Data"])
            if oid is not None and oid in traffic.order_ids:
                where[oid].add(sid)
                key_of[oid] = r["PartitionKey"]
    side = {oid: "parent" if s <= parents else "child" for oid, s in where.items() if s <= parents or s <= children}
    decisions_stream = rig.settings.kafka.topics.decisions
    assert len(rig.kinesis.list_shards(StreamName=decisions_stream)["Shards"]) == 1
    at: dict[str, dict[str, list[int]]] = {"parent": defaultdict(list), "child": defaultdict(list)}
    for pos, (_, data) in enumerate(read_records(rig.kinesis, decisions_stream)):
        oid = msgspec.json.decode(data, type=Decision).order_id
        if oid in side:
            at[side[oid]][key_of[oid]].append(pos)
    parent_at, child_at = at["parent"], at["child"]
    assert parent_at and child_at, "orders read from the parents and from the children"
    both = set(parent_at) & set(child_at)
    out_of_order = {k: (max(parent_at[k]), min(child_at[k])) for k in both if max(parent_at[k]) > min(child_at[k])}
    assert not out_of_order, (f"{len(out_of_order)} of {len(both)} keys had a child order decided before a parent "
                              f"order (key, (last parent position, first child position)): "
                              f"{list(out_of_order.items())[:5]}")
    last_parent = max(p for ps in parent_at.values() for p in ps)
    first_child = min(p for ps in child_at.values() for p in ps)
    assert last_parent < first_child, "a child shard was read before its parents were finished"
    return len(both)


def check_dead_letters(rig: Rig, traffic: Traffic) -> None:
    """Exactly the injected bad events, each once, from the shard and position it was read at."""
    bad = {sha(raw) for _, raw in traffic.bad}
    at = {(sid, r["SequenceNumber"]) for sid, recs in read_shards(rig.kinesis, rig.stream).items()
          for r in recs if sha(r["Data"]) in bad}
    assert len(at) == len(traffic.bad)
    dead = rig.settings.kafka.topics.dead_letters
    letters = [decode_dead_letter(data) for _, data in read_records(rig.kinesis, dead)]
    assert sorted((str(dl.partition), str(dl.offset)) for dl in letters) == sorted(at)
    assert all(dl.source == "kinesis" and (dl.masked or dl.payload_sha256 in bad) for dl in letters)


def reshard_with_backlog(rig: Rig, backlog: list[tuple[bytes, bytes]], rest: list[tuple[bytes, bytes]],
                         reshard: Callable[[], Any]) -> None:
    """Put ``backlog`` (into every open shard), reshard, wait for the stream to be ACTIVE again and
    put ``rest`` (whose keys now go to the children): all blocking, never yielding to the event loop
    the worker runs on, so the worker cannot process a batch in between. A GetRecords already in
    flight may fetch some of the backlog, but nothing of it is checkpointed before this returns: the
    checkpoints read at the end are all before the backlog."""
    open_shards = set(rig.shards())
    seqs = rig.put_backlog(backlog)
    assert set(seqs) == open_shards, "some backlog in every shard"
    reshard()
    rig.wait_active()
    put(rig.kinesis, rig.stream, rest)
    # let the worker's next look at the shards come due while it cannot run: the first thing it does
    # when it runs again is list them, the children included (which it must leave alone for now)
    time.sleep(rig.settings.stream.kinesis_lease_s / 3)
    cps = rig.checkpoints()
    for sid in open_shards:
        cp = cps[sid]
        assert cp is not None and int(cp) < min(seqs[sid]), \
            f"{sid} still had its backlog to read when the children got records"


async def test_a_split_parent_is_read_to_shard_end_before_its_children(rig: Rig) -> None:
    traffic = make_traffic(1600, seed=41, bad_every=80, duplicate_rate=0.03)
    total = len(traffic.emitted)
    half = total // 2
    put(rig.kinesis, rig.stream, traffic.emitted[:half])
    before = rig.shards()
    assert len(before) == 2

    run = Run(rig.settings).start()
    try:
        await until(lambda: run.events >= half, "the first half to be processed", runs=(run,), timeout_s=120)
        parent = min(before)
        lo, hi = (int(before[parent]["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
        reshard_with_backlog(
            rig, traffic.emitted[half:half + 400], traffic.emitted[half + 400:],
            lambda: rig.kinesis.split_shard(StreamName=rig.stream, ShardToSplit=parent,
                                            NewStartingHashKey=str((lo + hi) // 2)),
        )
        children = {sid for sid, s in rig.shards().items() if s.get("ParentShardId") == parent}
        assert len(children) == 2
        await until(lambda: run.events >= total, "every record to be processed", runs=(run,), timeout_s=120)
    finally:
        await run.stop()

    assert run.events == total, "every record read once"
    shards = read_shards(rig.kinesis, rig.stream)
    assert all(shards[c] for c in children), "both children got records after the split"
    cps = rig.checkpoints()
    assert cps[parent] == SHARD_END
    for sid in children | (set(before) - {parent}):
        assert cps[sid] == shards[sid][-1]["SequenceNumber"], f"{sid} leased, read and checkpointed to its end"
    assert rig.owners() == {None}, "leases released on a graceful stop"
    check_outputs(rig.kinesis, rig.settings.kafka.topics, traffic, run.worker.consumers["orders"].stats)
    check_dead_letters(rig, traffic)
    keys = check_parents_first(rig, traffic, {parent}, children)
    assert keys >= 50, f"only {keys} keys had orders on both sides of the split"


async def test_merged_shards_are_both_read_to_shard_end_before_their_child(rig: Rig) -> None:
    traffic = make_traffic(600, seed=43, bad_every=60, duplicate_rate=0.03)
    total = len(traffic.emitted)
    first = total // 3
    put(rig.kinesis, rig.stream, traffic.emitted[:first])
    parents = rig.shards()
    assert len(parents) == 2
    a, b = sorted(parents, key=lambda sid: int(parents[sid]["HashKeyRange"]["StartingHashKey"]))

    run = Run(rig.settings).start()
    try:
        await until(lambda: run.events >= first, "the first part to be processed", runs=(run,), timeout_s=120)
        # A short backlog in ``a`` (the child's ParentShardId), a long one in ``b`` (its
        # AdjacentParentShardId): ``a`` ends first, and the child must still wait for ``b``. The
        # records of ``a``'s keys held back from the backlog are put first after the merge (each
        # key's records stay in their order).
        b_start = int(parents[b]["HashKeyRange"]["StartingHashKey"])
        segment = traffic.emitted[first:first + 400]
        in_a = [r for r in segment if hash_key(r[0]) < b_start]
        in_b = [r for r in segment if hash_key(r[0]) >= b_start]
        reshard_with_backlog(
            rig, in_a[:10] + in_b, in_a[10:] + traffic.emitted[first + 400:],
            lambda: rig.kinesis.merge_shards(StreamName=rig.stream, ShardToMerge=a, AdjacentShardToMerge=b),
        )
        (child,) = (sid for sid, s in rig.shards().items() if sid not in parents)
        assert {rig.shards()[child].get("ParentShardId"), rig.shards()[child].get("AdjacentParentShardId")} == {a, b}
        await until(lambda: run.events >= total, "every record to be processed", runs=(run,), timeout_s=120)
    finally:
        await run.stop()

    assert run.events == total, "every record read once"
    shards = read_shards(rig.kinesis, rig.stream)
    assert shards[child], "the child got records after the merge"
    assert rig.checkpoints() == {a: SHARD_END, b: SHARD_END, child: shards[child][-1]["SequenceNumber"]}
    assert rig.owners() == {None}, "leases released on a graceful stop"
    check_outputs(rig.kinesis, rig.settings.kafka.topics, traffic, run.worker.consumers["orders"].stats)
    check_dead_letters(rig, traffic)
    keys = check_parents_first(rig, traffic, {a, b}, {child})
    assert keys >= 50, f"only {keys} keys had orders on both sides of the merge"
