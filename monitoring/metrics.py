"""Prometheus metrics shared by the scoring server, the stream worker and the monitors.

Names follow Prometheus conventions (``_total`` counters, ``_seconds`` histograms).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

DECISIONS = Counter("fraudscore_decisions_total", "Decisions made", ["decision", "source"])
REQUESTS = Counter("fraudscore_grpc_requests_total", "gRPC requests by method and status code", ["method", "code"])
STAGE_SECONDS = Histogram(
    "fraudscore_stage_seconds", "Latency of each decision stage", ["stage", "source"], buckets=LATENCY_BUCKETS
)
DEGRADED = Counter("fraudscore_degraded_total", "Answers given by a fallback", ["reason"])
RULE_ERRORS = Counter("fraudscore_rule_errors_total", "Rules that failed to evaluate", ["rule"])
MODEL_INFO = Info("fraudscore_model", "The model version serving")
RULESET_INFO = Info("fraudscore_ruleset", "The ruleset version serving")
RELOAD_REFUSED = Counter("fraudscore_reload_refused_total", "Refused model or ruleset changes", ["kind"])
DEAD_LETTERS = Counter("fraudscore_dead_letters_total", "Events sent to the dead-letter topic", ["topic", "error"])
EVENTS = Counter("fraudscore_stream_events_total", "Events consumed by the stream worker", ["topic"])
BATCH_SIZE = Histogram(
    "fraudscore_stream_batch_size", "Orders per micro-batch", buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
)
EVENT_TO_DECISION = Histogram(
    "fraudscore_event_to_decision_seconds",
    "Wall time from an order's event time to its decision (meaningful for live traffic)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CONSUMER_LAG = Gauge("fraudscore_consumer_lag", "Records behind the end of each partition", ["topic", "partition"])
