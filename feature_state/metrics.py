"""Prometheus metrics of the feature store (registered in the default registry, served by monitoring)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATE_EVENTS = Counter(
    "fraudscore_feature_late_events_total",
    "Events refused because they are older than an entity watermark minus the allowed lateness",
    ["source", "store"],
)
DUPLICATES = Counter(
    "fraudscore_feature_duplicate_events_total",
    "(entity, event) pairs that were already applied (redeliveries, replays); they changed nothing",
    ["source", "store"],
)
APPLIED = Counter(
    "fraudscore_feature_applied_events_total", "(entity, event) pairs applied", ["source", "store"]
)
PARTIAL = Counter(
    "fraudscore_feature_partial_applies_total",
    "Events applied to some entities but refused as late by others after a concurrent writer moved a watermark",
    ["store"],
)
CONFLICTS = Counter(
    "fraudscore_feature_write_conflicts_total",
    "Optimistic-concurrency conflicts (another writer changed an entity between read and commit); retried",
    ["store"],
)
UNAVAILABLE = Counter(
    "fraudscore_feature_store_unavailable_total", "Store calls that failed or timed out", ["store", "op"]
)
UNMATCHED_LABELS = Counter(
    "fraudscore_feature_labels_without_entity_total",
    "Fraud labels that carry no value for a label feature's entity (e.g. no merchant_id); not counted there",
    ["entity"],
)
OUT_OF_ORDER_READS = Counter(
    "fraudscore_feature_out_of_order_reads_total",
    "Reads that had to split a tile with the event log because later events were already applied",
    ["store"],
)
READ_SECONDS = Histogram(
    "fraudscore_feature_read_seconds",
    "Feature store read latency per batch",
    ["store"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
)
