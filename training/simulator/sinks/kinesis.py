"""Kinesis target: ``orders`` and ``labels`` streams through boto3 ``put_records``.

Records go in batches of at most 500 records / 5 MiB (the API limits); the partition key is
``customer_id`` for orders and ``order_id`` for labels. Records the service rejects (throttling)
are retried with exponential backoff, keeping their relative order within a batch. Works against
AWS or a local API server (``endpoint_url``, e.g. ``moto_server`` or kinesalite).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.simulator.exceptions import SinkError
from training.simulator.generator import Simulation
from training.simulator.records import SimEvent
from training.simulator.sinks.base import Driver, ProgressFn, SinkReport, StopFlag
from training.simulator.sinks.files import JsonlWriter, write_summary

MAX_RECORDS = 500
MAX_REQUEST_BYTES = 5 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class KinesisTarget:
    """Where to put records."""

    orders_stream: str = "orders"
    labels_stream: str = "labels"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    create_streams: bool = True
    """create missing streams (``shards`` each) and wait until they are active"""
    shards: int = 1
    max_retries: int = 8


def kinesis_client(target: KinesisTarget) -> Any:
    """A boto3 Kinesis client for the target (credentials from the usual AWS sources)."""
    try:
        import boto3
    except ImportError as exc:  # pragma: no cover - boto3 is in the aws extra
        raise SinkError("the Kinesis target needs boto3: pip install 'fraudscore[aws]'") from exc
    return boto3.client("kinesis", region_name=target.region, endpoint_url=target.endpoint_url)


def ensure_streams(client: Any, target: KinesisTarget) -> None:
    """Create the orders and labels streams when missing; wait until they are active."""
    from botocore.exceptions import BotoCoreError, ClientError

    for name in dict.fromkeys((target.orders_stream, target.labels_stream)):
        try:
            try:
                client.describe_stream_summary(StreamName=name)
            except client.exceptions.ResourceNotFoundException:
                client.create_stream(StreamName=name, ShardCount=target.shards)
            client.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})
        except (BotoCoreError, ClientError) as exc:
            raise SinkError(f"Kinesis stream {name!r} at {target.endpoint_url or target.region}: {exc}") from exc


class _Batcher:
    """Accumulates records per stream and puts them in API-sized requests."""

    def __init__(self, client: Any, target: KinesisTarget) -> None:
        self.client = client
        self.target = target
        self.pending: dict[str, list[dict[str, Any]]] = {}
        self.size: dict[str, int] = {}

    def add(self, stream: str, key: bytes, data: bytes) -> None:
        records = self.pending.setdefault(stream, [])
        n = len(data) + len(key)
        if records and (len(records) >= MAX_RECORDS or self.size[stream] + n > MAX_REQUEST_BYTES):
            self.flush(stream)
            records = self.pending[stream]
        records.append({"Data": data, "PartitionKey": key.decode()})
        self.size[stream] = self.size.get(stream, 0) + n

    def flush(self, stream: str | None = None) -> None:
        for name in [stream] if stream is not None else list(self.pending):
            records = self.pending.get(name)
            if records:
                self._put(name, records)
            self.pending[name] = []
            self.size[name] = 0

    def _put(self, stream: str, records: list[dict[str, Any]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(self.target.max_retries + 1):
            try:
                resp = self.client.put_records(StreamName=stream, Records=records)
            except (BotoCoreError, ClientError) as exc:
                raise SinkError(f"put_records to Kinesis stream {stream!r} failed: {exc}") from exc
            if not resp.get("FailedRecordCount"):
                return
            records = [r for r, res in zip(records, resp["Records"], strict=True) if "ErrorCode" in res]
            time.sleep(min(2.0, 0.05 * 2**attempt))
        raise SinkError(
            f"Kinesis stream {stream!r} kept rejecting {len(records)} records after {self.target.max_retries} "
            "retries (throttled? add shards or lower --rate)"
        )


def send_to_kinesis(
    events: Iterable[SimEvent],
    target: KinesisTarget,
    *,
    client: Any | None = None,
    rate: float | None = None,
    live: bool = False,
    stop: StopFlag | None = None,
    progress: ProgressFn | None = None,
    truth_dir: str | Path | None = None,
    max_batch: int = 2000,
) -> SinkReport:
    """Put ``events`` into Kinesis; returns what was sent. Raises :class:`SinkError` on trouble."""
    client = client if client is not None else kinesis_client(target)
    if target.create_streams:
        ensure_streams(client, target)
    streams = {"orders": target.orders_stream, "labels": target.labels_stream}
    report = SinkReport(target="kinesis", outputs=dict(streams))
    truth = JsonlWriter(Path(truth_dir), streams=("truth",)) if truth_dir is not None else None
    if truth is not None:
        report.outputs["truth"] = str(truth.paths["truth"])
    batcher = _Batcher(client, target)
    driver = Driver(events, rate=rate, live=live, max_batch=max_batch, stop=stop, progress=progress)
    try:
        for due, batch in driver.batches():
            wait = driver.delay(due)
            if wait > 0 and driver.stop.wait(wait):
                break
            for event in driver.prepare(batch):
                name = streams.get(event.stream)
                if name is not None:
                    batcher.add(name, event.key, event.value)
                elif truth is not None:
                    truth.write(event)
                else:
                    continue
                report.count(event)
            batcher.flush()
            driver.tick(report)
    finally:
        if truth is not None:
            truth.close()
    if truth is not None and isinstance(events, Simulation):
        write_summary(events, Path(truth_dir or ".") / "summary.json")
    return driver.finish(report)
