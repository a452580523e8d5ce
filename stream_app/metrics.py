"""Stream metrics (Prometheus). Shared ones (events, batch size, lag, dead letters, event-to-decision)
live in :mod:`monitoring.metrics`; these are the stream worker's own.

=============================================  =====================================================
``fraudscore_consumer_lag{topic,partition}``   records behind the partition's end (Kafka) — from
                                               ``monitoring.metrics``; Kinesis: ``…_millis_behind``
``fraudscore_stream_events_total{topic}``      events consumed
``fraudscore_stream_batch_size``               orders per micro-batch
``fraudscore_event_to_decision_seconds``       wall time from an order's event time to its decision
``fraudscore_stream_freshness_seconds``        wall time from the record's append to the broker until
                                               its feature update is visible to ``Score``
``fraudscore_stream_batch_seconds{stage}``     time per batch in decode / decide / publish / commit
``fraudscore_stream_duplicates_total``         redelivered orders (marked ``fraudscore-duplicate``)
``fraudscore_stream_ledger_confirm_failed_total``  decided orders whose ledger claim could not be confirmed
``fraudscore_stream_retries_total{reason}``    batch retries (feature store down, publish failed)
``fraudscore_stream_rebalances_total{kind}``   partitions assigned / revoked
``fraudscore_kinesis_millis_behind{shard}``    Kinesis ``MillisBehindLatest`` per shard
``fraudscore_webhook_deliveries_total{outcome}``  webhook deliveries: delivered / retried / dead_lettered
=============================================  =====================================================
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FRESHNESS = Histogram(
    "fraudscore_stream_freshness_seconds",
    "Wall time from a record's append to the broker until its feature update is visible",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SECONDS = Histogram(
    "fraudscore_stream_batch_seconds", "Time per micro-batch by stage", ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DUPLICATES = Counter("fraudscore_stream_duplicates_total", "Redelivered orders (marked as duplicates)")
LEDGER_CONFIRM_FAILED = Counter(
    "fraudscore_stream_ledger_confirm_failed_total",
    "Decided orders whose ledger claim could not be confirmed after publishing (a replay would republish them "
    "unmarked)",
)
RETRIES = Counter("fraudscore_stream_retries_total", "Batch retries by reason", ["reason"])
SLOW_BATCHES = Counter(
    "fraudscore_stream_slow_batches_total",
    "Batches that took longer than a quarter of the poll interval (the next polls take fewer records)",
)
REBALANCES = Counter("fraudscore_stream_rebalances_total", "Partitions assigned or revoked", ["kind"])
KINESIS_BEHIND = Gauge("fraudscore_kinesis_millis_behind", "Kinesis MillisBehindLatest per shard", ["stream", "shard"])
WEBHOOK = Counter("fraudscore_webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"])
