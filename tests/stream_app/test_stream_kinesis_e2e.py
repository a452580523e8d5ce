"""The Kinesis path end to end on a local Kinesis API server (moto, over HTTP): shard leases and
checkpoints in DynamoDB, a shard split mid-stream, decisions and dead letters on Kinesis streams."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import boto3
import msgspec
from streamkit import Traffic, make_traffic

from contracts.config import TopicNames
from contracts.events import Action, Decision
from fraudscore.assemble import build_parts
from stream_app.deadletter import decode_dead_letter
from stream_app.kinesis_checkpoints import SHARD_END
from stream_app.sinks import is_marked_duplicate
from stream_app.worker import StreamWorker
from tests.services import MotoServer


def kinesis(endpoint: str) -> Any:
    return boto3.client("kinesis", region_name="us-east-1", endpoint_url=endpoint)


def put(client: Any, stream: str, records: list[tuple[bytes, bytes]]) -> None:
    for i in range(0, len(records), 500):
        chunk = [{"Data": v, "PartitionKey": k.decode()} for k, v in records[i:i + 500]]
        resp = client.put_records(StreamName=stream, Records=chunk)
        assert resp["FailedRecordCount"] == 0


def read_stream(client: Any, stream: str) -> list[bytes]:
    return [data for _, data in read_records(client, stream)]


def read_records(client: Any, stream: str) -> list[tuple[str, bytes]]:
    """(PartitionKey, Data) of every record of every shard."""
    return [(r["PartitionKey"], r["Data"]) for recs in read_shards(client, stream).values() for r in recs]


def read_shards(client: Any, stream: str) -> dict[str, list[dict[str, Any]]]:
    """Every record (as GetRecords returns it) of every shard, closed ones included: shard id → its
    records in sequence order."""
    out: dict[str, list[dict[str, Any]]] = {}
    for shard in client.list_shards(StreamName=stream)["Shards"]:
        it = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"],
                                       ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
        recs = out.setdefault(shard["ShardId"], [])
        empty = 0
        while it and empty < 3:
            resp = client.get_records(ShardIterator=it, Limit=1000)
            recs.extend(resp["Records"])
            empty = 0 if resp["Records"] else empty + 1
            it = resp.get("NextShardIterator")
    return out


def check_outputs(client: Any, topics: TopicNames, traffic: Traffic, note: object = None) -> None:
    """The worker's outputs on the Kinesis decisions, actions and dead-letter streams: exactly one
    unmarked decision per order and every repeat marked, the actions that go with them, and one dead
    letter per bad event. ``note`` is shown when orders are missing (e.g. the consumer's stats).

    Kinesis has no headers: a repeat carries "duplicate": true in its JSON (and still decodes as a
    Decision); the partition key is the order id either way."""
    unmarked: dict[str, list[Decision]] = {}
    marked: dict[str, list[Decision]] = {}
    for key, data in read_records(client, topics.decisions):
        d = msgspec.json.decode(data, type=Decision)
        assert key == d.order_id
        (marked if is_marked_duplicate(data) else unmarked).setdefault(d.order_id, []).append(d)
    missing = traffic.order_ids - set(unmarked)
    assert not missing, (len(unmarked), len(missing), note)
    assert set(unmarked) == traffic.order_ids and all(len(v) == 1 for v in unmarked.values()), \
        "exactly one unmarked decision per order_id"
    assert Counter({k: len(v) for k, v in marked.items()}) == Counter(traffic.duplicates), \
        "every repeat marked, nothing else"
    first = {oid: ds[0] for oid, ds in unmarked.items()}
    acts_unmarked: Counter[str] = Counter()
    acts_marked: Counter[str] = Counter()
    for key, data in read_records(client, topics.actions):
        a = msgspec.json.decode(data, type=Action)
        assert key == a.order_id
        if is_marked_duplicate(data):
            acts_marked[a.order_id] += 1
        else:
            assert a.action == first[a.order_id].decision
            acts_unmarked[a.order_id] += 1
    assert acts_unmarked == Counter({oid for oid, d in first.items() if d.decision != "allow"})
    assert acts_marked == Counter(oid for oid, ds in marked.items() for d in ds if d.decision != "allow")
    letters = [decode_dead_letter(v) for v in read_stream(client, topics.dead_letters)]
    assert len(letters) == len(traffic.bad)
    assert all(dl.source == "kinesis" and isinstance(dl.partition, str) and dl.offset for dl in letters)


async def test_kinesis_end_to_end_with_a_shard_split(
    stream_settings: Any, moto_server: MotoServer, unique: str
) -> None:
    endpoint = moto_server.endpoint_url
    settings = stream_settings(**{
        "stream.source": "kinesis",
        "stream.kinesis_endpoint_url": endpoint,
        "stream.kinesis_stream": f"orders-{unique}",
        "stream.kinesis_checkpoint_table": f"checkpoints-{unique}",
        "stream.kinesis_lease_s": 3.0,
        "stream.kinesis_poll_interval_ms": 50,
    })
    client = kinesis(endpoint)
    t = settings.kafka.topics
    for name, shards in ((settings.stream.kinesis_stream, 2), (t.decisions, 2), (t.actions, 1), (t.dead_letters, 1)):
        client.create_stream(StreamName=name, ShardCount=shards)
    for name in (settings.stream.kinesis_stream, t.decisions, t.actions, t.dead_letters):
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    traffic = make_traffic(2000, seed=21, bad_every=100, duplicate_rate=0.03)
    half = len(traffic.emitted) // 2
    put(client, settings.stream.kinesis_stream, traffic.emitted[:half])

    parts = build_parts(settings)
    worker = StreamWorker(settings, parts.pipeline, parts.store, roles=("orders",))
    task = asyncio.create_task(worker.run())

    async def events_at_least(n: int) -> None:
        for _ in range(1200):
            if task.done():
                task.result()
            if worker.consumers and worker.consumers["orders"].stats.events >= n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"stuck at {worker.consumers['orders'].stats}")

    try:
        await events_at_least(half)
        # Reshard while running: split the first shard; new records for its keys go to the children.
        shard = client.list_shards(StreamName=settings.stream.kinesis_stream)["Shards"][0]
        lo, hi = int(shard["HashKeyRange"]["StartingHashKey"]), int(shard["HashKeyRange"]["EndingHashKey"])
        client.split_shard(StreamName=settings.stream.kinesis_stream, ShardToSplit=shard["ShardId"],
                           NewStartingHashKey=str((lo + hi) // 2))
        put(client, settings.stream.kinesis_stream, traffic.emitted[half:])
        await events_at_least(len(traffic.emitted))
    finally:
        worker.stop()
        await asyncio.wait_for(task, 60)

    check_outputs(client, t, traffic, worker.consumers["orders"].stats)
    # moto keeps routing records to a split parent and never ends its iterator, so the SHARD_END →
    # children hand-over (NextShardIterator = null on real Kinesis) cannot be observed here (it is, on
    # kinesalite, in test_stream_kinesis_reshard.py); what can: the worker kept its leases and
    # checkpoints through the split and lost nothing.
    leases = worker.consumers["orders"].checkpoints.leases()  # type: ignore[attr-defined]
    assert leases[shard["ShardId"]].checkpoint not in (None, SHARD_END)
    assert all(lease.owner is None for lease in leases.values()), "leases released on a graceful stop"


def test_worker_process_on_kinesis_only_needs_no_kafka(
    stream_settings: Any, moto_server: MotoServer, unique: str, tmp_path: Any
) -> None:
    """`fraudscore worker --source kinesis` with Kinesis outputs: no Kafka anywhere (plain asyncio
    process instead of faust), /healthz served, decisions on Kinesis, SIGTERM exits 0."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    from tests.services import free_port

    endpoint = moto_server.endpoint_url
    client = kinesis(endpoint)
    names = {"orders": f"k-orders-{unique}", "decisions": f"k-decisions-{unique}", "actions": f"k-actions-{unique}",
             "dead_letters": f"k-dead-{unique}"}
    for name in names.values():
        client.create_stream(StreamName=name, ShardCount=1)
    for name in names.values():
        client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2})
    traffic = make_traffic(300, seed=23, bad_every=50, duplicate_rate=0)
    put(client, names["orders"], traffic.emitted)
    settings = stream_settings()
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUDSCORE", "KAFKA"))}
    env.update({
        "PYTHONPATH": str(root), "FRAUDSCORE_DATA_DIR": str(settings.data_dir), "FRAUDSCORE_METRICS_PORT": str(port),
        "FRAUDSCORE__KAFKA__EMBEDDED_PORT": str(free_port()),  # nothing may listen there: no Kafka is used
        "FRAUDSCORE__STREAM__SOURCE": "kinesis", "FRAUDSCORE__STREAM__KINESIS_ENDPOINT_URL": endpoint,
        "FRAUDSCORE__STREAM__KINESIS_STREAM": names["orders"],
        "FRAUDSCORE__STREAM__KINESIS_CHECKPOINT_TABLE": f"k-checkpoints-{unique}",
        "FRAUDSCORE__KAFKA__TOPICS__DECISIONS": names["decisions"],
        "FRAUDSCORE__KAFKA__TOPICS__ACTIONS": names["actions"],
        "FRAUDSCORE__KAFKA__TOPICS__DEAD_LETTERS": names["dead_letters"],
    })
    log = tmp_path / "kinesis-worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fraudscore", "worker", "--role", "orders"], env=env, cwd=root,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        decided: set[str] = set()
        while time.monotonic() < deadline and decided != traffic.order_ids:
            assert proc.poll() is None, log.read_text()[-3000:]
            decided = {msgspec.json.decode(v, type=Decision).order_id for v in read_stream(client, names["decisions"])}
            time.sleep(0.5)
        assert decided == traffic.order_ids, log.read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(read_stream(client, names["dead_letters"])) == len(traffic.bad)
