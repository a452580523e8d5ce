"""The Kinesis source: shard leases, micro-batches across owned shards, checkpoints after effects.

Loop: every ``kinesis_lease_s / 3`` refresh this worker's heartbeat, list the shards, renew owned
leases, release the shards held beyond a fair share (⌈ready shards ÷ live workers⌉, live = unexpired
heartbeat) and acquire free ones up to it, taking a child shard only once its parents are at
``SHARD_END``. The balance runs between batches, after everything processed was checkpointed, so a
released shard is taken over from its checkpoint with nothing replayed. Each poll calls
``GetRecords`` on the owned shards (threads, boto3), merges the records into one micro-batch, runs
it through the processor, publishes the outputs, and only then checkpoints each shard's last
sequence number (conditional on still owning the lease). A shard
whose iterator ends (closed by a split or merge) is checkpointed ``SHARD_END`` and released.
A failed batch is retried within ``batch_retry_budget_s``, then every shard of the batch is
rewound to its checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from contracts.config import Settings
from monitoring import metrics
from stream_app import metrics as smetrics
from stream_app.exceptions import BatchAbandoned, CheckpointError, SourceError
from stream_app.kafka_source import AdaptiveChunk, BatchProcessor, ConsumerStats, retry_batch
from stream_app.kinesis_checkpoints import SHARD_END, DynamoCheckpoints, LeaseLost
from stream_app.records import SourceRecord
from stream_app.sinks import RecordSink

log = logging.getLogger(__name__)


@dataclass
class _Shard:
    shard_id: str
    iterator: str | None
    checkpoint: str | None
    last_seq: str | None = None
    ended: bool = False


class KinesisBatchConsumer:
    """Consumes one Kinesis stream, sharing its shards with the other workers of the application."""

    def __init__(self, settings: Settings, *, stream: str, processor: BatchProcessor, sink: RecordSink,
                 name: str = "orders", client: Any = None, checkpoint_client: Any = None) -> None:
        from stream_app.worker import kinesis_client

        self.settings = settings
        self.stream = stream
        self.processor = processor
        self.sink = sink
        self.name = name
        self.client = client or kinesis_client(settings)
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        s = settings.stream
        self.checkpoints = DynamoCheckpoints(
            checkpoint_client or kinesis_client(settings, "dynamodb"), s.kinesis_checkpoint_table,
            settings.kafka.consumer_group, stream, self.worker_id, s.kinesis_lease_s,
        )
        self.owned: dict[str, _Shard] = {}
        self.stats = ConsumerStats()
        self.stopping = asyncio.Event()
        self._next_lease_check = 0.0
        self.chunk = AdaptiveChunk(s.max_batch)

    def stop(self) -> None:
        self.stopping.set()

    # ------------------------------------------------------------------ shards and leases
    def _list_shards(self) -> list[dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamName": self.stream}
        try:
            while True:
                resp = self.client.list_shards(**kwargs)
                shards.extend(resp["Shards"])
                token = resp.get("NextToken")
                if not token:
                    return shards
                kwargs = {"NextToken": token}
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
                raise SourceError(f"Kinesis stream {self.stream!r} does not exist") from exc
            raise CheckpointError(f"ListShards on {self.stream} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise CheckpointError(f"ListShards on {self.stream} failed: {exc}") from exc

    def _iterator(self, shard_id: str, checkpoint: str | None) -> str:
        if checkpoint:
            resp = self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard_id,
                                                  ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                                  StartingSequenceNumber=checkpoint)
        else:
            resp = self.client.get_shard_iterator(StreamName=self.stream, ShardId=shard_id,
                                                  ShardIteratorType="TRIM_HORIZON")
        return str(resp["ShardIterator"])

    def _balance(self) -> None:
        """Heartbeat, renew owned leases, drop lost ones, release the surplus over a fair share and
        take free shards up to it."""
        self.checkpoints.heartbeat()
        shards = self._list_shards()
        leases = self.checkpoints.leases()
        now = time.time()
        workers = self.checkpoints.workers(now)
        for shard_id in list(self.owned):
            try:
                self.checkpoints.renew(shard_id)
            except LeaseLost:
                log.warning("%s: lost the lease on %s", self.name, shard_id)
                del self.owned[shard_id]
        known = {s["ShardId"] for s in shards}

        def done(shard_id: str | None) -> bool:
            if not shard_id or shard_id not in known:
                return True  # no parent, or the parent expired from the stream
            lease = leases.get(shard_id)
            return lease is not None and lease.finished

        ready = [s for s in shards if not done(s["ShardId"])
                 and done(s.get("ParentShardId")) and done(s.get("AdjacentParentShardId"))]
        # live workers: unexpired heartbeats, plus any holder of an unexpired lease, plus this one
        owners = {lease.owner for lease in leases.values() if lease.owner and not lease.free(now)}
        owners |= workers
        owners.add(self.worker_id)
        share = math.ceil(len(ready) / max(1, len(owners)))
        # give up the surplus (never below the share): everything processed is checkpointed already
        for sid in sorted(self.owned)[share:]:
            self.checkpoints.release(sid)
            del self.owned[sid]
            smetrics.REBALANCES.labels("revoked").inc()
            log.info("%s: released shard %s (fair share %d of %d shards, %d workers)",
                     self.name, sid, share, len(ready), len(owners))
        for s in ready:
            if len(self.owned) >= share:
                break
            sid = s["ShardId"]
            if sid in self.owned:
                continue
            lease = leases.get(sid)
            if lease is not None and not lease.free(now) and lease.owner != self.worker_id:
                continue
            if self.checkpoints.acquire(sid):
                cp = lease.checkpoint if lease else None
                self.owned[sid] = _Shard(sid, self._iterator(sid, cp), cp)
                smetrics.REBALANCES.labels("assigned").inc()
                log.info("%s: took shard %s (checkpoint %s)", self.name, sid, cp)
        self.stats.assigned = sorted(self.owned)

    # ------------------------------------------------------------------ polling
    def _get(self, shard: _Shard, limit: int) -> tuple[list[SourceRecord], str | None, bool]:
        from botocore.exceptions import ClientError

        if shard.iterator is None:
            return [], None, True
        try:
            resp = self.client.get_records(ShardIterator=shard.iterator, Limit=max(1, min(10_000, limit)))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code == "ExpiredIteratorException":
                shard.iterator = self._iterator(shard.shard_id, shard.last_seq or shard.checkpoint)
                return [], shard.iterator, False
            if code in ("ProvisionedThroughputExceededException", "LimitExceededException"):
                return [], shard.iterator, False
            raise
        behind = resp.get("MillisBehindLatest")
        if behind is not None:
            smetrics.KINESIS_BEHIND.labels(self.stream, shard.shard_id).set(behind)
        recs = []
        for r in resp.get("Records", []):
            ts = r.get("ApproximateArrivalTimestamp")
            recs.append(SourceRecord(self.stream, shard.shard_id, r["SequenceNumber"],
                                     r["PartitionKey"].encode(), r["Data"],
                                     int(ts.timestamp() * 1000) if ts is not None else None))
        nxt = resp.get("NextShardIterator")
        return recs, nxt, nxt is None

    async def _poll(self) -> list[tuple[_Shard, list[SourceRecord], str | None, bool]]:
        shards = list(self.owned.values())
        if not shards:
            return []
        per = max(1, self.settings.stream.max_batch // len(shards))
        results = await asyncio.gather(*(asyncio.to_thread(self._get, sh, per) for sh in shards))
        return [(sh, *res) for sh, res in zip(shards, results, strict=True)]

    async def run(self) -> None:
        await asyncio.to_thread(self.checkpoints.ensure_table)
        s = self.settings.stream
        idle = s.kinesis_poll_interval_ms / 1000.0
        try:
            while not self.stopping.is_set():
                if time.monotonic() >= self._next_lease_check:
                    await asyncio.to_thread(self._balance)
                    self._next_lease_check = time.monotonic() + s.kinesis_lease_s / 3
                polled = await self._poll()
                records = [r for _, recs, _, _ in polled for r in recs]
                if records:
                    metrics.EVENTS.labels(self.stream).inc(len(records))
                    try:
                        result = await retry_batch(records, self.processor, self.sink, budget_s=s.batch_retry_budget_s,
                                                   stats=self.stats, stopping=self.stopping, chunk=self.chunk)
                    except BatchAbandoned as exc:
                        self.stats.abandoned += 1
                        log.error("%s: %s; rewinding shards to their checkpoints", self.name, exc)
                        for sh, *_ in polled:
                            sh.iterator = await asyncio.to_thread(self._iterator, sh.shard_id, sh.checkpoint)
                        continue
                    self.processor.committed()
                    self.stats.add(result, len(records))
                await self._advance(polled)
                if not records:
                    await asyncio.sleep(idle)
        finally:
            for sid in list(self.owned):
                try:
                    await asyncio.to_thread(self.checkpoints.release, sid)
                except CheckpointError:
                    log.warning("%s: could not release %s", self.name, sid)
            try:
                await asyncio.to_thread(self.checkpoints.leave)
            except CheckpointError:
                log.warning("%s: could not delete its heartbeat (it expires in %ss)", self.name, s.kinesis_lease_s)

    async def _advance(self, polled: list[tuple[_Shard, list[SourceRecord], str | None, bool]]) -> None:
        """Checkpoint each shard after its records' effects are durable; retire ended shards."""
        for sh, recs, nxt, ended in polled:
            if sh.shard_id not in self.owned:
                continue
            try:
                if recs:
                    sh.last_seq = str(recs[-1].position)
                if ended:
                    await asyncio.to_thread(self.checkpoints.checkpoint, sh.shard_id, SHARD_END)
                    await asyncio.to_thread(self.checkpoints.release, sh.shard_id)
                    del self.owned[sh.shard_id]
                    self._next_lease_check = 0.0  # children may be ready now
                    log.info("%s: shard %s finished (SHARD_END)", self.name, sh.shard_id)
                    continue
                if recs:
                    await asyncio.to_thread(self.checkpoints.checkpoint, sh.shard_id, sh.last_seq)  # type: ignore[arg-type]
                    sh.checkpoint = sh.last_seq
                sh.iterator = nxt
            except LeaseLost:
                log.warning("%s: lost %s before checkpointing; its new owner replays from the last checkpoint",
                            self.name, sh.shard_id)
                self.owned.pop(sh.shard_id, None)
